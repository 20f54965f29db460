"""Metric figures from ``metrics/per_dataset.csv``: per-dataset bars and the ablation heat map."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from hxpe.config import Config
from hxpe.figures.selection import Role

log = logging.getLogger(__name__)

METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1_max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1_max": "pixel F1-max",
    "pixel_aupro_anomalyclip": "pixel AUPRO (AnomalyCLIP)",
    "pixel_aupro_exact": "pixel AUPRO (exact)",
}


def bar_metrics(cfg: Config) -> list[str]:
    """The metrics of the per-dataset bars (``figures.metrics`` or the main-table four)."""
    if cfg.figures.metrics:
        return list(cfg.figures.metrics)
    return ["image_auroc", "image_ap", "pixel_auroc", f"pixel_aupro_{cfg.evaluation.aupro}"]


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def dataset_bars(per_dataset: pd.DataFrame, cfg: Config, roles: list[Role]) -> Figure | None:
    """Bars: per target dataset and metric, one bar per compared variant (values in %)."""
    metrics = bar_metrics(cfg)
    labels = {r.variant: r.label for r in roles}
    frame = per_dataset[
        per_dataset["variant"].isin(labels) & per_dataset["metric"].isin(metrics)
    ].copy()
    if frame.empty:
        log.info("figures: per_dataset.csv has none of %s for %s; no bars", metrics, list(labels))
        return None
    frame["value"] = 100 * frame["value"]
    frame["variant"] = frame["variant"].map(labels)
    frame["metric"] = frame["metric"].map(metric_label)
    directions = list(dict.fromkeys(frame["direction"]))
    grid = sns.catplot(
        data=frame,
        kind="bar",
        x="dataset",
        y="value",
        hue="variant",
        hue_order=[r.label for r in roles if r.label in set(frame["variant"])],
        col="metric",
        col_order=[metric_label(m) for m in metrics if metric_label(m) in set(frame["metric"])],
        row="direction",
        row_order=directions,
        height=2.8,
        aspect=1.1,
        sharex=False,
        palette="deep",
    )
    grid.set_titles("{row_name} · {col_name}")
    grid.set_axis_labels("", "%")
    for ax in grid.axes.flat:
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.0f", fontsize=6, padding=1)
    grid.figure.suptitle("Per-dataset metrics (mean over classes)", y=1.02)
    return grid.figure


def ablation_heatmap(per_dataset: pd.DataFrame, cfg: Config) -> Figure | None:
    """Every variant × every metric (mean over the direction's target datasets, in %)."""
    if per_dataset.empty:
        log.info("figures: per_dataset.csv is empty; no ablation figure")
        return None
    means = per_dataset.groupby(["direction", "variant", "metric"], sort=False)["value"].mean()
    means = (100 * means).reset_index()
    preferred = bar_metrics(cfg)
    present = list(dict.fromkeys(means["metric"]))
    metric_order = [m for m in preferred if m in present] + [
        m for m in present if m not in preferred
    ]
    variant_order = [v for v in cfg.variants if v in set(means["variant"])]
    variant_order += [v for v in dict.fromkeys(means["variant"]) if v not in variant_order]
    directions = list(dict.fromkeys(means["direction"]))
    fig, axes = plt.subplots(
        1,
        len(directions),
        figsize=(1.1 * len(metric_order) * len(directions) + 2.5, 0.45 * len(variant_order) + 2.2),
        squeeze=False,
    )
    for ax, direction in zip(axes[0], directions, strict=True):
        table = (
            means[means["direction"] == direction]
            .pivot(index="variant", columns="metric", values="value")
            .reindex(index=variant_order, columns=metric_order)
        )
        table.columns = [metric_label(m) for m in table.columns]
        labels = [f"{v} (main)" if v == cfg.main_variant else v for v in table.index]
        sns.heatmap(
            table.set_axis(labels, axis=0),
            ax=ax,
            annot=True,
            fmt=".1f",
            cmap="viridis",
            cbar=False,
            linewidths=0.5,
            annot_kws={"fontsize": 7},
        )
        ax.set_title(f"{direction} (mean over target datasets, %)", fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=35, labelsize=8)
        ax.tick_params(axis="y", labelsize=8, rotation=0)
    fig.suptitle("Ablation: every variant × metric")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
