"""Small fixtures for the agent's tests and examples: a generated dataset index with planted defects.

The images are crops of scikit-image's real ``brick`` photo (bundled offline); anomalous ones get a
dark scratch or a red spot drawn at a known place.

Example:
    >>> index = planted_index(tempfile.mkdtemp())  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile  # noqa: F401 - used by the docstring example
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from hxpe.config import file_sha256
from hxpe.data.index import DatasetIndex, make_image_id, validate_frame


def texture_crop(y: int, x: int, size: int = 128) -> Image.Image:
    """A ``size`` px crop of the brick photo at half resolution, starting at pixel (y, x)."""
    from skimage import data

    img = data.brick()
    crop = img[y : y + 2 * size : 2, x : x + 2 * size : 2]
    return Image.fromarray(np.stack([crop] * 3, -1).astype(np.uint8))


def plant_scratch(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A dark 3 px line from (x0, y0) to (x1, y1)."""
    out = img.copy()
    ImageDraw.Draw(out).line(list(box), fill=(15, 15, 15), width=3)
    return out


def plant_spot(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A red filled ellipse in ``box``."""
    out = img.copy()
    ImageDraw.Draw(out).ellipse(list(box), fill=(200, 40, 30))
    return out


def planted_index(root: str | Path, name: str = "planted", n_good: int = 2) -> DatasetIndex:
    """A two-class dataset in MVTec layout: one train normal, ``n_good`` test normals, two defects."""
    root = Path(root)
    rows = []

    def add(cls: str, split: str, defect: str, stem: str, img: Image.Image) -> None:
        rel = f"{cls}/{split}/{defect}/{stem}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
        label = int(defect != "good")
        rows.append(
            {
                "image_id": make_image_id(name, cls, split, defect, rel),
                "dataset": name,
                "cls": cls,
                "split": split,
                "label": label,
                "defect_type": defect,
                "image": rel,
                "mask": "",
                "sha256": file_sha256(root / rel),
            }
        )

    for cls, (y0, x0) in {"wall": (0, 0), "tile": (40, 200)}.items():
        add(cls, "train", "good", "000", texture_crop(y0, x0))
        for i in range(n_good):
            add(cls, "test", "good", f"{i:03d}", texture_crop(y0 + 2 * i, x0 + 3 * i))
        add(cls, "test", "scratch", "000", plant_scratch(texture_crop(y0, x0), (10, 15, 45, 30)))
        add(cls, "test", "spot", "000", plant_spot(texture_crop(y0, x0), (90, 90, 104, 104)))
    return DatasetIndex(name=name, root=root, frame=validate_frame(pd.DataFrame(rows)), kind="mvtec")
