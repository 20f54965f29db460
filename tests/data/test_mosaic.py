"""AdaCLIP's mosaic (hxpe.data.mosaic): a seeded training item is the 2x2 mosaic of four images of its
class and of their masks, built as AdaCLIP's ``combine_img`` builds it (dataset/base_dataset.py:54-98),
then transformed as any item (image bicubic, mask as the authors resize masks)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hxpe.data.images import mask_tensor, to_tensor
from hxpe.data.index import DatasetIndex
from hxpe.data.mosaic import Mosaic
from hxpe.data.torch_dataset import IndexDataset

W, H, SIZE = 30, 20, 64


def _index(tmp_path) -> DatasetIndex:
    """Six 30x20 images of class ``part`` (distinct colours); odd ones carry a one-pixel scratch."""
    rows = []
    for i in range(6):
        img = np.zeros((H, W, 3), np.uint8)
        img[...] = (40 * i, 255 - 40 * i, 7 * i)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        mask = ""
        if i % 2:
            m = np.zeros((H, W), np.uint8)
            m[3 + i, 2 : W - 2] = 255
            Image.fromarray(m).save(tmp_path / f"{i}_mask.png")
            mask = f"{i}_mask.png"
        rows.append(
            {
                "image_id": f"d/part/test/x/{i}",
                "dataset": "d",
                "cls": "part",
                "split": "test",
                "label": i % 2,
                "defect_type": "x" if i % 2 else "good",
                "image": f"{i}.png",
                "mask": mask,
                "sha256": "",
            }
        )
    return DatasetIndex("d", tmp_path, pd.DataFrame(rows), kind="mvtec")


def _expected(tmp_path, tiles: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The mosaic by hand: quadrant slices of a 2H x 2W canvas, row-major."""
    image = np.zeros((2 * H, 2 * W, 3), np.uint8)
    mask = np.zeros((2 * H, 2 * W), bool)
    for k, t in enumerate(tiles):
        r, c = (k // 2) * H, (k % 2) * W
        image[r : r + H, c : c + W] = np.asarray(Image.open(tmp_path / f"{t}.png"))
        if t % 2:
            mask[r : r + H, c : c + W] = np.asarray(Image.open(tmp_path / f"{t}_mask.png")) > 0
    return image, mask


def test_a_seeded_item_is_the_authors_2x2_mosaic(tmp_path):
    seed = 5
    dataset = IndexDataset(_index(tmp_path), SIZE, "test", mosaic=Mosaic(1.0, seed))
    item = dataset[2]
    # the authors' draws: random() < aug_rate, then random.sample(class records, 4)
    rng = random.Random(seed)
    assert rng.random() < 1.0
    tiles = rng.sample(list(range(6)), 4)
    image, mask = _expected(tmp_path, tiles)
    assert item["mosaic"] is True
    assert torch.equal(item["image"], to_tensor(Image.fromarray(image), SIZE))
    assert torch.equal(item["mask"], mask_tensor(mask, SIZE))
    assert int(item["mask"].sum()) > 0 and sum(t % 2 for t in tiles) > 0
    assert item["label"] == 0 and item["phrase"] == ""  # its own label (image 2 is normal)


def test_the_rate_draws_one_random_per_item(tmp_path):
    index = _index(tmp_path)
    dataset = IndexDataset(index, SIZE, "test", mosaic=Mosaic(0.2, 11))
    got = [dataset[i]["mosaic"] for i in range(6) for _ in range(10)]
    rng = random.Random(11)
    want = []
    for _ in range(60):
        hit = rng.random() < 0.2
        want.append(hit)
        if hit:
            rng.sample(range(6), 4)
    assert got == want and 0 < sum(got) < 60
    plain = IndexDataset(index, SIZE, "test")[3]
    assert "mosaic" not in plain and plain["label"] == 1


def test_too_few_images_for_a_mosaic_say_what_to_do():
    with pytest.raises(
        ValueError, match="needs 4 images of the class; it has 3. Lower train.mosaic_rates"
    ):
        Mosaic(1.0, 0).pick([1, 2, 3])
