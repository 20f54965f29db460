"""Masks at the protocol resolution are the authors' masks: torchvision's ``Resize`` on the 0/255 PIL
mask, ``ToTensor``, ``> 0.5`` (AnomalyCLIP utils.py:16-20, test.py:85; AdaCLIP trainer.py:56-60).

The reference below *is* torchvision (installed beside torch), not a re-derivation, so the test fails
if :func:`hxpe.data.images.mask_tensor` interpolates differently (e.g. bilinear on 0/1 floats without
antialiasing, which keeps 12-40 % more pixels of thin scratches).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hxpe.data.images import mask_tensor, read_mask
from hxpe.data.torch_dataset import load_mask

transforms = pytest.importorskip("torchvision.transforms")


def _scratches(height: int, width: int, n: int = 12, seed: int = 0) -> np.ndarray:
    """``n`` one- and two-pixel-wide scratches (straight and diagonal) in an empty mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), bool)
    longest = min(200, height // 2, width // 2)
    for k in range(n):
        r, c = int(rng.integers(0, height - longest)), int(rng.integers(0, width - longest))
        length, thick = int(rng.integers(longest // 3, longest)), 1 + k % 2
        if k % 3 == 0:
            mask[r : r + thick, c : c + length] = True  # horizontal
        elif k % 3 == 1:
            mask[r : r + length, c : c + thick] = True  # vertical
        else:
            for t in range(length):  # diagonal
                mask[r + t, c + t : c + t + thick] = True
    return mask


def _authors(mask: np.ndarray, size: int) -> torch.Tensor:
    pil = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    target = transforms.Compose(
        [transforms.Resize((size, size)), transforms.CenterCrop(size), transforms.ToTensor()]
    )
    gt = target(pil)
    return (gt > 0.5).float()


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(1024, 1024, 518), (1000, 1500, 518), (1562, 1562, 518), (700, 1100, 336), (300, 200, 518)],
)
def test_masks_match_torchvision_bit_for_bit(height, width, size):
    mask = _scratches(height, width)
    ours = mask_tensor(mask, size)
    theirs = _authors(mask, size)
    assert ours.shape == theirs.shape == (1, size, size)
    assert int(theirs.sum()) > 0
    assert torch.equal(ours, theirs)


def test_thin_scratches_keep_the_authors_pixel_count_not_more():
    """The project's former rule (0/1 floats, bilinear, no antialiasing) keeps more pixels."""
    mask = _scratches(1562, 1562)
    ours = int(mask_tensor(mask, 518).sum())
    naive = torch.nn.functional.interpolate(
        torch.from_numpy(mask.astype(np.float32))[None, None], size=(518, 518), mode="bilinear"
    )
    assert ours == int(_authors(mask, 518).sum())
    assert int((naive > 0.5).sum()) > 1.2 * ours


@pytest.mark.parametrize("value", [1, 255])
def test_mask_files_with_values_1_and_255_give_the_authors_mask(tmp_path, value):
    mask = _scratches(1000, 1500, seed=3)
    path = tmp_path / f"mask_{value}.png"
    Image.fromarray(mask.astype(np.uint8) * value, mode="L").save(path)
    theirs = np.array(Image.open(path).convert("L")) > 0  # the authors' binarisation
    np.testing.assert_array_equal(read_mask(path), theirs)
    assert torch.equal(load_mask(path, 518), _authors(theirs, 518))
