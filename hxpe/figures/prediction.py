"""The overlay figure of ``hxpe predict`` (:meth:`hxpe.predict.Prediction.save`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from hxpe.figures.style import MAP_CMAP, blank, show_image, wrap

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
