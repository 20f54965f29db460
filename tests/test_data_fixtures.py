"""Helpers that write tiny dataset trees in each raw layout (used by the tests/test_data_*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 8


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    """A small random RGB image (format from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (SIZE, SIZE), value: int = 255) -> Path:
    """A mask with a defect square of ``value`` in its top-left corner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[: size[1] // 2, : size[0] // 2] = value
    Image.fromarray(arr).save(path)
    return path


def write_mvtec_tree(
    root: Path,
    classes: dict[str, dict[str, int]],
    *,
    normal: str = "good",
    image_ext: str = ".png",
    mask_ext: str = ".png",
    mask_suffix: str = "_mask",
) -> Path:
    """``classes``: {cls: {"train": n, "good": n, "<defect>": n, ...}} in MVTec layout."""
    seed = 0
    for cls, counts in classes.items():
        for key, n in counts.items():
            for i in range(n):
                seed += 1
                if key == "train":
                    write_image(root / cls / "train" / normal / f"{i:03d}{image_ext}", seed)
                elif key == "good":
                    write_image(root / cls / "test" / normal / f"{i:03d}{image_ext}", seed)
                else:
                    write_image(root / cls / "test" / key / f"{i:03d}{image_ext}", seed)
                    mask = root / cls / "ground_truth" / key / f"{i:03d}{mask_suffix}{mask_ext}"
                    write_mask(mask)
    return root
