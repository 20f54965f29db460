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


VERDICTS = ("anomalous", "normal", "failed")


def verdict_truth(extractions: pd.DataFrame, indexes: dict[str, DatasetIndex]) -> pd.DataFrame:
    """Images per ground truth (rows ``normal``, ``anomalous``) and stage-03 outcome (columns
    ``anomalous``, ``normal``, ``failed``); ``indexes`` maps each dataset name to its index.

    Example:
        >>> from pathlib import Path
        >>> idx = DatasetIndex("d", Path("."), pd.DataFrame(
        ...     {"image_id": ["a", "b", "c"], "label": [1, 0, 1]}))
        >>> rec = pd.DataFrame({"dataset": ["d"] * 3, "image_id": ["a", "b", "c"],
        ...     "status": ["ok", "ok", "failed"], "verdict": [True, True, None]})
        >>> verdict_truth(rec, {"d": idx}).values.tolist()
        [[1, 0, 0], [1, 0, 1]]
    """
    truth = []
    for dataset, image_id in zip(extractions["dataset"], extractions["image_id"], strict=True):
        if dataset not in indexes:
            raise KeyError(f"no index of dataset {dataset!r} given for the verdicts' ground truth")
        label = indexes[dataset].frame.set_index("image_id")["label"].get(image_id)
        if label is None:
            raise KeyError(f"{image_id!r} is not in the index of {dataset!r}")
        truth.append("anomalous" if int(label) else "normal")
    outcome = [
        "failed" if s != "ok" else ("anomalous" if v else "normal")
        for s, v in zip(extractions["status"], extractions["verdict"], strict=True)
    ]
    table = pd.crosstab(pd.Series(truth, name="truth"), pd.Series(outcome, name="verdict"))
    return table.reindex(index=["normal", "anomalous"], columns=list(VERDICTS), fill_value=0)


def verdict_truth_figure(table: pd.DataFrame) -> Figure:
    """The :func:`verdict_truth` counts as a heat map, titled with the verdict's precision and
    recall on anomalous images (failed records count as not flagged)."""
    tp = int(table.loc["anomalous", "anomalous"])
    fp = int(table.loc["normal", "anomalous"])
    positives = int(table.loc["anomalous"].sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / positives if positives else float("nan")
    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    shown = ax.imshow(table.to_numpy(), cmap="Blues")
    for (r, c), n in pd.DataFrame(table.to_numpy()).stack().items():
        ax.text(c, r, str(n), ha="center", va="center", fontsize=10,
                color="white" if n > table.to_numpy().max() / 2 else "black")  # fmt: skip
    ax.set_xticks(range(table.shape[1]), [f"judged {c}" for c in table.columns], fontsize=8)
    ax.set_yticks(range(table.shape[0]), [f"truly {r}" for r in table.index], fontsize=8)
    ax.set_title(
        f"Stage 03 verdicts vs ground truth\nprecision {precision:.2f}, recall {recall:.2f} "
        "(anomalous)",
        fontsize=9,
    )
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    fig.tight_layout()
    return fig


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
