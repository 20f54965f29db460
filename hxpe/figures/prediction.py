"""The figures of one prediction (``hxpe predict``, :meth:`hxpe.predict.Prediction.save`, the app):
the overlay, the DINOv2 prompt map and the word-importance bars."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from hxpe.figures.style import MAP_CMAP, VFM_CMAP, blank, show_image, show_map, text_panel, wrap
from hxpe.figures.words import word_bars

if TYPE_CHECKING:
    from hxpe.predict import Prediction


def prediction_figure(pred: Prediction) -> Figure:
    """The overlay of ``hxpe predict``: the image and its anomaly map (fixed scale 0 to 1)."""
    image = np.asarray(pred.image, dtype=np.float32) / 255.0
    amap = pred.overlay_map()
    h, w = amap.shape
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.4 * h / max(w, 1) + 0.9))
    show_image(axes[0], image, "input")
    axes[1].imshow(image)
    shown = axes[1].imshow(amap, cmap=MAP_CMAP, alpha=0.5, vmin=0.0, vmax=1.0)
    if (amap > 0.5).any():
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
    image = np.asarray(pred.image, dtype=np.float32) / 255.0
    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(4.6, 4.4 * h / max(w, 1) + 0.6))
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
