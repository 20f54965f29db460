"""Notebook helpers for stages 02-03: image pairs beside their descriptions, failures, verdicts.

Example:
    >>> records = pd.DataFrame(
    ...     {"dataset": ["d", "d", "d"], "error": [None, "schema: phrase: empty", "schema: x"]}
    ... )
    >>> failure_table(records).values.tolist()
    [['d', 'ok', 1], ['d', 'schema', 2]]
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd

from hxpe.agent.runner import reason_of
from hxpe.data.images import read_image
from hxpe.data.index import DatasetIndex

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def failure_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Counts per dataset and status/reason (``ok`` or the failure reason)."""
    if frame.empty:
        return pd.DataFrame(columns=["dataset", "outcome", "n"])
    outcome = [reason_of(e) or "ok" for e in frame["error"]]
    return (
        frame.assign(outcome=outcome)
        .groupby(["dataset", "outcome"])
        .size()
        .rename("n")
        .reset_index()
    )


def verdict_table(extractions: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and class: images judged anomalous, judged normal, failed, and VLM vetoes."""
    frame = extractions.copy()
    frame["outcome"] = [
        "failed" if s != "ok" else ("anomalous" if v else "normal")
        for s, v in zip(frame["status"], frame["verdict"], strict=True)
    ]
    table = frame.pivot_table(
        index=["dataset", "cls"],
        columns="outcome",
        values="image_id",
        aggfunc="count",
        fill_value=0,
    )
    vetoed = frame[
        (frame["status"] == "ok") & frame["anomaly"].astype(bool) & ~frame["verdict"].astype(bool)
    ]
    table["vlm_veto"] = vetoed.groupby(["dataset", "cls"]).size().reindex(table.index, fill_value=0)
    return table.reset_index()


def verdict_plot(extractions: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Bar chart of verdicts per class (seaborn)."""
    import seaborn as sns

    table = verdict_table(extractions)
    cols = [c for c in ("anomalous", "normal", "failed") if c in table.columns]
    long = table.melt(
        id_vars=["dataset", "cls"], value_vars=cols, var_name="verdict", value_name="n"
    )
    ax = ax or plt.subplots(figsize=(max(4, 0.6 * len(table)), 3))[1]
    sns.barplot(data=long, x="cls", y="n", hue="verdict", ax=ax)
    ax.set(xlabel="class", ylabel="images", title="Stage 03 verdicts")
    ax.tick_params(axis="x", rotation=45)
    return ax


def description_figure(
    descriptions: pd.DataFrame,
    indexes: dict[str, DatasetIndex],
    n: int = 4,
    seed: int = 0,
    width: int = 60,
) -> Figure:
    """``n`` sampled rows: reference image, test image and the description text."""
    sample = descriptions.sample(min(n, len(descriptions)), random_state=seed).sort_values(
        "image_id"
    )
    fig, axes = plt.subplots(
        len(sample),
        3,
        figsize=(11, 2.6 * len(sample)),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1, 2.2]},
    )
    for row_axes, rec in zip(axes, sample.itertuples(index=False), strict=True):
        index = indexes[rec.dataset]
        ids = [rec.reference_id, rec.image_id]
        for ax, image_id, title in zip(row_axes[:2], ids, ("reference", "test"), strict=True):
            ax.axis("off")
            if image_id:
                ax.imshow(read_image(index.abs_path(index.row(image_id)["image"])))
            ax.set_title(title if image_id else "no reference", fontsize=8)
        row_axes[2].axis("off")
        body = textwrap.fill(str(rec.text), width)
        row_axes[2].text(
            0,
            1,
            f"{rec.image_id} [{rec.status}]\n\n{body}",
            va="top",
            fontsize=7,
            family="monospace",
        )
    fig.tight_layout()
    return fig
