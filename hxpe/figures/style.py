"""Shared look of every figure: saving (PNG + PDF), the demo-profile note, image panels."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hxpe.backbones import DEMO_BACKBONES_LABEL
from hxpe.config import Config

log = logging.getLogger(__name__)

MAP_CMAP = "jet"
VFM_CMAP = "magma"
DEMO_NOTE = f"DEMO PROFILE: {DEMO_BACKBONES_LABEL}."


def is_demo(cfg: Config) -> bool:
    """Whether figures of this profile are the demo's (its trained small backbones) or come from
    random-init models."""
    return cfg.profile == "demo" or cfg.model.clip.pretrained is None


def add_note(fig: Figure, cfg: Config) -> None:
    """Stamp the demo note below everything ``fig`` draws (tick labels and legends included)
    when the profile is a demo; ``bbox_inches="tight"`` and the notebooks' inline figures keep it."""
    if not is_demo(cfg):
        return
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    y = box.y0 / fig.get_figheight() - 0.02
    fig.text(
        0.5,
        y,
        DEMO_NOTE,
        ha="center",
        va="top",
        fontsize=8,
        color="#b00020",
        bbox={"facecolor": "#fff3f3", "edgecolor": "#b00020", "boxstyle": "round,pad=0.3"},
    )


def save_figure(fig: Figure, cfg: Config, name: str, out_dir: Path) -> list[Path]:
    """Write ``fig`` as ``<name>.<fmt>`` for every configured format; close it; return the paths."""
    add_note(fig, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in cfg.figures.formats:
        path = out_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=cfg.figures.dpi, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    log.info("figure %s (%s)", name, ", ".join(cfg.figures.formats))
    return paths


def wrap(text: str, width: int = 48, max_lines: int | None = None) -> str:
    """``text`` wrapped to ``width`` columns, cut to ``max_lines`` with an ellipsis."""
    lines = textwrap.wrap(" ".join(text.split()), width) or [""]
    if max_lines is not None and len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1][: width - 1] + "…"]
    return "\n".join(lines)


def blank(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def show_image(ax: Axes, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(np.clip(image, 0, 1))
    blank(ax)
    if title:
        ax.set_title(title, fontsize=8)


def show_mask(ax: Axes, image: np.ndarray, mask: np.ndarray) -> None:
    """The image with the ground-truth region tinted and outlined."""
    ax.imshow(np.clip(image, 0, 1))
    if mask.any():
        ax.imshow(np.ma.masked_where(mask < 0.5, mask), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
        ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
    blank(ax)


def show_map(
    ax: Axes,
    image: np.ndarray,
    amap: np.ndarray,
    vmin: float,
    vmax: float,
    cmap: str = MAP_CMAP,
    mask: np.ndarray | None = None,
) -> None:
    """A heat map over the image (``amap`` may be coarser: it is stretched to the image extent)."""
    h, w = image.shape[:2]
    ax.imshow(np.clip(image, 0, 1), extent=(0, w, h, 0))
    ax.imshow(
        amap,
        cmap=cmap,
        alpha=0.5,
        vmin=vmin,
        vmax=vmax if vmax > vmin else vmin + 1e-6,
        extent=(0, w, h, 0),
        interpolation="bilinear",
    )
    if mask is not None and mask.any():
        ax.contour(mask, levels=[0.5], colors="white", linewidths=0.7)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    blank(ax)


def value_range(maps: list[np.ndarray]) -> tuple[float, float]:
    """A shared colour scale for ``maps`` (0.5th to 99.5th percentile of their values)."""
    if not maps:
        return 0.0, 1.0
    values = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1e-6)


def text_panel(ax: Axes, text: str, *, fontsize: float = 8, color: str = "black") -> None:
    blank(ax)
    ax.text(0.02, 0.98, text, ha="left", va="top", fontsize=fontsize, color=color, wrap=True)
