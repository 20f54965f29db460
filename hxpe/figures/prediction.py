"""The figures of one prediction (``hxpe predict``, :meth:`hxpe.predict.Prediction.save`, the app):
the overlay, the DINOv2 prompt map and the word-importance bars.

Whatever the image's size and shape, the figures stay small: they draw a copy of the image downscaled
to at most :data:`DISPLAY_SIDE` pixels on its long side (the anomaly map is resized to that copy, not
to the full image), and the figure's height follows the image's aspect ratio clamped to
:data:`MAX_ASPECT` (a 20×10000 strip is drawn as a narrow strip in a figure of ordinary size).

Example:
    >>> from PIL import Image
    >>> display_size(Image.new("RGB", (20, 10000)))
    (4, 2048)
    >>> figure_aspect(10000, 20), figure_aspect(100, 150)
    (3.0, 0.6666666666666666)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from hxpe.figures.style import MAP_CMAP, VFM_CMAP, blank, show_image, show_map, text_panel, wrap
from hxpe.figures.words import word_bars


class Prediction(Protocol):
    """What the figures read of a prediction (:class:`hxpe.predict.Prediction` has it): a structural
    type, so this module needs nothing from :mod:`hxpe.predict`, which draws with it."""

    image_path: Path
    image: Image.Image
    image_score: float
    vfm_prompt: np.ndarray | None
    reference_path: Path | None
    provenance: dict[str, Any]
    word_importance: list[tuple[str, float]] | None

    @property
    def phrase(self) -> str | None: ...

    @property
    def verdict(self) -> bool | None: ...

    def overlay_map(self, size: tuple[int, int] | None = None) -> np.ndarray: ...


DISPLAY_SIDE = 2048  # longest side, in pixels, of the image copy a figure draws
MAX_ASPECT = 3.0  # height/width of the figure's image area is clamped to [1/3, 3]


def display_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the copy of ``image`` the figures draw: at most :data:`DISPLAY_SIDE`
    on the long side (never upscaled), at least 1 pixel on each."""
    w, h = image.size
    scale = min(1.0, DISPLAY_SIDE / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def figure_aspect(h: int, w: int) -> float:
    """The image's height/width, clamped to ``[1 / MAX_ASPECT, MAX_ASPECT]`` for the figure size."""
    return min(max(h / max(w, 1), 1.0 / MAX_ASPECT), MAX_ASPECT)


def display_image(pred: Prediction) -> np.ndarray:
    """The prediction's image as float ``[h, w, 3]`` in [0, 1], downscaled to :func:`display_size`."""
    size = display_size(pred.image)
    small = pred.image if size == pred.image.size else pred.image.resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def prediction_figure(pred: Prediction) -> Figure:
    """The overlay of ``hxpe predict``: the image and its anomaly map (fixed scale 0 to 1)."""
    image = display_image(pred)
    h, w = image.shape[:2]
    amap = pred.overlay_map(size=(h, w))
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.4 * figure_aspect(h, w) + 0.9))
    show_image(axes[0], image, "input")
    axes[1].imshow(image)
    shown = axes[1].imshow(amap, cmap=MAP_CMAP, alpha=0.5, vmin=0.0, vmax=1.0)
    if min(h, w) >= 2 and (amap > 0.5).any():  # contour needs a 2×2 grid at least
        axes[1].contour(amap, levels=[0.5], colors="white", linewidths=0.8)
    blank(axes[1])
    axes[1].set_title(f"anomaly map (score {pred.image_score:.3f})", fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02)
    phrase = f'phrase: "{pred.phrase}"' if pred.phrase else "phrase: (none: generic prompts)"
    verdict = {True: "anomalous", False: "normal", None: "no verdict"}[pred.verdict]
    fig.suptitle(wrap(f"{pred.image_path.name}: {phrase}; verdict: {verdict}", 100, 2), fontsize=9)
    note = pred.provenance.get("note")
    if note:
        fig.text(0.5, 0.005, note, ha="center", fontsize=7, color="#b00020")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def prompt_figure(pred: Prediction) -> Figure:
    """The DINOv2 prompt map of a prediction over its image (fixed scale 0 to 1)."""
    image = display_image(pred)
    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(4.6, 4.4 * figure_aspect(h, w) + 0.6))
    if pred.vfm_prompt is None:
        text_panel(ax, "this checkpoint has no DINOv2 prompt (vfm disabled)")
    else:
        show_map(ax, image, pred.vfm_prompt, 0.0, 1.0, cmap=VFM_CMAP)
        source = "vs the reference" if pred.reference_path is not None else "patch rarity"
        ax.set_title(f"DINOv2 prompt ({source})", fontsize=9)
    fig.tight_layout()
    return fig


def word_importance_figure(pred: Prediction) -> Figure:
    """Leave-one-word-out bars of a prediction's phrase, or a note saying why there are none."""
    values = pred.word_importance or []
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.32 * max(len(values), 3)))
    if values and pred.phrase:
        word_bars(ax, pred.phrase, values)
    else:
        reason = "no phrase (generic prompts)" if not pred.phrase else "not computed"
        text_panel(ax, f"word importance: {reason}")
    fig.tight_layout()
    return fig
