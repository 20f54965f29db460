"""Image figures from stored maps: the qualitative grid, HXPE vs baselines, explanation cards.

All three read one (direction, target dataset) at a time; the explorer reuses :func:`sample_row`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hxpe.figures.artifacts import Artifacts, Sample
from hxpe.figures.selection import Role, card_rows, qualitative_rows
from hxpe.figures.style import (
    VFM_CMAP,
    blank,
    show_image,
    show_map,
    show_mask,
    text_panel,
    value_range,
    wrap,
)

log = logging.getLogger(__name__)

KIND_COLOURS = {"hit": "#1b7f3b", "miss": "#b36b00", "false alarm": "#b00020"}
KIND_PLURALS = {"hit": "hits", "miss": "misses", "false alarm": "false alarms"}


def explanation_text(sample: Sample, width: int = 34) -> str:
    """Phrase and verdict of one image, wrapped for a narrow panel."""
    ex = sample.explanation
    phrase = f'"{ex.phrase}"' if ex.phrase else "(no phrase)"
    lines = [
        f"{sample.cls} / {sample.defect_type}",
        "",
        "explainable phrase:",
        wrap(phrase, width, 4),
        "",
        f"verdict: {ex.verdict_text()}",
    ]
    if sample.score is not None:
        lines.append(f"image score: {sample.score:.3f}")
    return "\n".join(lines)


def sample_row(
    axes: Sequence[Axes],
    sample: Sample,
    vrange: tuple[float, float],
    *,
    with_vfm: bool,
    titles: bool,
) -> None:
    """image | ground truth | anomaly map | [DINOv2 prompt] | explanation, on ``axes``."""
    cols = ["image", "ground truth", "anomaly map"] + (["DINOv2 prompt"] if with_vfm else [])
    cols.append("explanation")
    show_image(axes[0], sample.image)
    show_mask(axes[1], sample.image, sample.mask)
    if sample.anomaly_map is not None:
        show_map(axes[2], sample.image, sample.anomaly_map, *vrange)
    else:
        text_panel(axes[2], "no stored map")
    if with_vfm:
        if sample.vfm_prompt is not None:
            show_map(axes[3], sample.image, sample.vfm_prompt, 0.0, 1.0, cmap=VFM_CMAP)
        else:
            text_panel(axes[3], "no DINOv2 prompt")
    text_panel(axes[-1], explanation_text(sample), fontsize=7)
    if titles:
        for ax, title in zip(axes, cols, strict=True):
            ax.set_title(title, fontsize=9)


def grid_figure(samples: list[Sample], title: str) -> Figure:
    """The qualitative grid: one row per sample (see :func:`sample_row`)."""
    with_vfm = any(s.vfm_prompt is not None for s in samples)
    if not with_vfm:
        log.info("figures: %s has no stored DINOv2 prompts; that column is left out", title)
    ncols = 5 if with_vfm else 4
    vrange = value_range([s.anomaly_map for s in samples if s.anomaly_map is not None])
    fig, axes = plt.subplots(
        len(samples),
        ncols,
        figsize=(2.1 * ncols + 0.6, 2.1 * len(samples) + 0.8),
        squeeze=False,
        gridspec_kw={"width_ratios": [1] * (ncols - 1) + [1.35]},
    )
    for i, sample in enumerate(samples):
        sample_row(axes[i], sample, vrange, with_vfm=with_vfm, titles=i == 0)
        axes[i][0].set_ylabel("anomalous" if sample.label else "normal", fontsize=8)
    fig.suptitle(f"{title}\n(anomaly maps on one scale: {vrange[0]:.3f} to {vrange[1]:.3f})")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def qualitative_grid(art: Artifacts, direction: str, dataset: str) -> Figure:
    """Qualitative grid of the main variant on one target dataset."""
    variant = art.cfg.main_variant
    scores = art.scores(direction, variant, dataset)
    rows = qualitative_rows(scores, art.cfg.figures.images_per_dataset)
    samples = [art.sample(direction, variant, dataset, i) for i in rows["image_id"]]
    return grid_figure(samples, f"HXPE ({variant}) on {dataset}, {direction}")


def comparison_figure(
    art: Artifacts, direction: str, dataset: str, roles: list[Role]
) -> Figure | None:
    """Anomalous images with the map of each compared variant (each column on its own scale)."""
    present = [r for r in roles if art.has_maps(direction, r.variant, dataset)]
    for r in roles:
        if r not in present:
            log.info(
                "figures: no maps of %s on %s/%s; column left out", r.label, direction, dataset
            )
    if len(present) < 2:
        log.info(
            "figures: fewer than two variants with maps on %s/%s; no comparison", direction, dataset
        )
        return None
    scores = art.scores(direction, present[0].variant, dataset)
    ids = qualitative_rows(scores, art.cfg.figures.comparison_rows)
    ids = ids[ids["label"] == 1]["image_id"].tolist() or ids["image_id"].tolist()
    grid = [[art.sample(direction, r.variant, dataset, i) for r in present] for i in ids]
    ranges = [
        value_range([row[j].anomaly_map for row in grid if row[j].anomaly_map is not None])
        for j in range(len(present))
    ]
    ncols = len(present) + 1
    fig, axes = plt.subplots(
        len(ids), ncols, figsize=(2.3 * ncols, 2.3 * len(ids) + 0.8), squeeze=False
    )
    for i, row in enumerate(grid):
        show_mask(axes[i][0], row[0].image, row[0].mask)
        axes[i][0].set_ylabel(wrap(row[0].defect_type, 16), fontsize=8)
        for j, (role, s) in enumerate(zip(present, row, strict=True), start=1):
            if s.anomaly_map is None:
                text_panel(axes[i][j], "no stored map")
                continue
            show_map(axes[i][j], s.image, s.anomaly_map, *ranges[j - 1], mask=s.mask)
            axes[i][j].set_xlabel(f"score {s.score:.3f}", fontsize=8)
            if i == 0:
                axes[i][j].set_title(wrap(role.label, 24), fontsize=9)
    axes[0][0].set_title("image + ground truth", fontsize=9)
    fig.suptitle(
        f"{dataset}, {direction}: anomaly maps side by side (each column on its own scale)"
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def card_text(sample: Sample, kind: str, threshold: float) -> str:
    """The chain description -> phrase -> verdict -> score of one card."""
    ex = sample.explanation
    description = wrap(ex.description, 70, 5) if ex.description else "(no VLM description stored)"
    phrase = f'"{ex.phrase}"' if ex.phrase else "(none)"
    flagged = "flagged" if (sample.score or 0) >= threshold else "not flagged"
    truth = f"anomalous ({sample.defect_type})" if sample.label else "normal"
    return "\n".join(
        [
            f"{kind.upper()}   {sample.image_id}   truth: {truth}",
            "VLM description:",
            description,
            f"  ↓ extracted phrase: {wrap(phrase, 60, 2)}",
            f"  ↓ verdict: {ex.verdict_text()}",
            f"  ↓ image score: {sample.score:.3f}  (F1-max threshold {threshold:.3f}: {flagged})",
        ]
    )


def cards_figure(art: Artifacts, direction: str, dataset: str) -> Figure:
    """Explanation cards of the main variant: hits, misses and false alarms on one dataset."""
    variant = art.cfg.main_variant
    scores = art.scores(direction, variant, dataset)
    kinds, threshold = card_rows(scores, art.cfg.figures.cards_per_kind)
    entries: list[tuple[str, Sample]] = []
    for kind, frame in kinds.items():
        entries += [(kind, art.sample(direction, variant, dataset, i)) for i in frame["image_id"]]
    absent = [KIND_PLURALS[k] for k, frame in kinds.items() if frame.empty]
    vrange = value_range([s.anomaly_map for _, s in entries if s.anomaly_map is not None])
    fig, axes = plt.subplots(
        max(1, len(entries)),
        3,
        figsize=(11, 2.0 * max(1, len(entries)) + 0.8),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1, 4.2]},
    )
    if not entries:
        for ax in axes[0]:
            blank(ax)
    for (kind, sample), row in zip(entries, axes, strict=False):
        colour = KIND_COLOURS[kind]
        show_mask(row[0], sample.image, sample.mask)
        if sample.anomaly_map is not None:
            show_map(row[1], sample.image, sample.anomaly_map, *vrange)
        text_panel(row[2], card_text(sample, kind, threshold), fontsize=7.5)
        for ax in row[:2]:
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(colour)
                spine.set_linewidth(2)
    title = f"Explanation cards: HXPE ({variant}) on {dataset}, {direction}"
    if absent:
        title += f"\nno {' and no '.join(absent)} at the F1-max threshold {threshold:.3f}"
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
