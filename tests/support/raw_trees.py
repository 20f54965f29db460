"""Helpers that write tiny dataset trees in raw layouts (images, masks, MVTec and VisA trees) for the
data tests (tests/data/) and the output-option tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
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


def write_visa(root: Path) -> Path:
    """A VisA tree (two classes, ``split_csv/1cls.csv``) under ``root``; masks hold small integers."""
    rows = [("candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", "")]
    rows.append(("candle", "test", "normal", "candle/Data/Images/Normal/0001.JPG", ""))
    rows.append(
        (
            "candle",
            "test",
            "anomaly",
            "candle/Data/Images/Anomaly/000.JPG",
            "candle/Data/Masks/Anomaly/000.png",
        )
    )
    rows.append(("pcb1", "train", "normal", "pcb1/Data/Images/Normal/0000.JPG", ""))
    for i, (_, _, _, image, mask) in enumerate(rows):
        write_image(root / image, seed=i)
        if mask:
            write_mask(root / mask, value=1)  # VisA masks hold small integers
    csv = root / "split_csv" / "1cls.csv"
    csv.parent.mkdir(parents=True)
    pd.DataFrame(rows, columns=["object", "split", "label", "image", "mask"]).to_csv(
        csv, index=False
    )
    return root
