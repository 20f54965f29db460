"""Notebook helpers: a count table over prepared datasets and a grid of samples with their masks."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hxpe.data.images import read_image, read_mask
from hxpe.data.index import DatasetIndex

MASK_COLOUR = np.array([1.0, 0.1, 0.1])
MASK_OPACITY = 0.45


def summary_table(indexes: dict[str, DatasetIndex]) -> pd.DataFrame:
    """Dataset × class rows with normal/anomalous counts per split (columns like ``test_anomalous``).

    Columns are ``<split>_normal`` and ``<split>_anomalous`` for every split present, plus ``total``.
    """
    frames = []
    for name, index in indexes.items():
        f = index.frame.assign(
            dataset=name,
            column=index.frame["split"]
            + np.where(index.frame["label"] == 1, "_anomalous", "_normal"),
        )
        frames.append(f)
    if not frames:
        return pd.DataFrame()
    table = (
        pd.concat(frames)
        .pivot_table(index=["dataset", "cls"], columns="column", values="image", aggfunc="count")
        .fillna(0)
        .astype(int)
    )
    order = [c for s in ("train", "test") for c in (f"{s}_normal", f"{s}_anomalous")]
    columns = [c for c in order if c in table.columns] + sorted(set(table.columns) - set(order))
    table = table[columns]
    table["total"] = table.sum(axis=1)
    table.columns.name = None
    return table


def _overlay(index: DatasetIndex, row: pd.Series) -> np.ndarray:
    rgb = np.asarray(read_image(index.abs_path(row["image"])), dtype=np.float32) / 255.0
    if row["mask"]:
        mask = read_mask(index.abs_path(row["mask"]))
        rgb[mask] = (1 - MASK_OPACITY) * rgb[mask] + MASK_OPACITY * MASK_COLOUR
    return rgb


def sample_grid(index: DatasetIndex, n_per_class: int = 2) -> Figure:
    """One row per class: ``n_per_class`` test normal and ``n_per_class`` anomalous images, masks in red.

    Samples are the first in sorted path order, so the figure is the same on every run.
    """
    test = index.split("test").sort_values("image")
    rows = []
    for cls in index.classes:
        sub = test[test["cls"] == cls]
        picked = pd.concat(
            [sub[sub["label"] == 0].head(n_per_class), sub[sub["label"] == 1].head(n_per_class)]
        )
        rows.append((cls, picked))
    n_cols = 2 * n_per_class
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2 * n_cols, 2 * len(rows)), squeeze=False)
    for r, (cls, picked) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(picked):
                row = picked.iloc[c]
                ax.imshow(_overlay(index, row))
                ax.set_title(f"{cls}: {row['defect_type']}", fontsize=8)
    fig.suptitle(f"{index.name}: test samples (ground-truth masks in red)")
    fig.tight_layout()
    return fig
