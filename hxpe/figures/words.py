"""Which words of the explainable phrase move the anomaly score: leave one word out, re-score.

For a phrase of n words the model scores the image n + 1 times (the full phrase, then each phrase
with one word removed). A word's importance is ``score(full) - score(without the word)``: positive
when the word pushes the image towards "anomalous", negative when it pulls it back. A one-word phrase
left without its word is the generic abnormal prompt (no phrase).

Example (a tiny random-init model: the words are real, their importances mean nothing):
    >>> from hxpe.model.model import build_model
    >>> from hxpe.model.tiny import tiny_model_config
    >>> _ = torch.manual_seed(0)
    >>> model = build_model(tiny_model_config("anomalyclip", vfm={"enabled": False}))
    >>> image = torch.rand(3, 64, 64)
    >>> ranked = word_importance(model, image, "small dark scratch")
    >>> [word for word, _ in ranked], all(isinstance(v, float) for _, v in ranked)
    (['small', 'dark', 'scratch'], True)
"""

from __future__ import annotations

import contextlib
import logging

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from hxpe.figures.artifacts import Sample
from hxpe.figures.style import show_mask, wrap

log = logging.getLogger(__name__)


def _batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must be [3, H, W] or [1, 3, H, W] in [0, 1]; got {tuple(x.shape)}"
        )
    return x


def leave_one_out(phrase: str) -> tuple[list[str], list[str | None]]:
    """The words of ``phrase`` and the phrases to score: the full one, then one word removed each."""
    words = phrase.split()
    if not words:
        raise ValueError("the phrase is empty: there is no word to leave out")
    drops = [" ".join(words[:i] + words[i + 1 :]) or None for i in range(len(words))]
    return words, [phrase, *drops]


@torch.inference_mode()
def word_importance(
    model: nn.Module,
    image: torch.Tensor,
    phrase: str,
    reference: torch.Tensor | None = None,
    *,
    batch_size: int = 8,
) -> list[tuple[str, float]]:
    """``(word, score(full phrase) - score(phrase without the word))`` for each word, in order.

    Every phrase variant is scored with the same HSF k-means draw (``same_rng_per_image``), so the
    differences are the words' and not the RNG's.

    ``image`` and ``reference`` are ``[3, H, W]`` (or ``[1, 3, H, W]``) floats in [0, 1]; the model is
    an :class:`hxpe.model.model.HXPEModel` (or anything with its forward signature).
    """
    words, phrases = leave_one_out(phrase)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    img = _batch(image, "image").to(device)
    ref = _batch(reference, "reference").to(device) if reference is not None else None
    model.eval()
    same_rng = getattr(model, "same_rng_per_image", contextlib.nullcontext)
    with same_rng():
        scores = _scores(model, img, ref, phrases, batch_size, device)
    full = scores[0]
    return [(w, full - s) for w, s in zip(words, scores[1:], strict=True)]


def _scores(
    model: nn.Module,
    img: torch.Tensor,
    ref: torch.Tensor | None,
    phrases: list[str],
    batch_size: int,
    device: torch.device,
) -> list[float]:
    """Image scores of ``img`` with each phrase, ``batch_size`` phrases per forward."""
    scores: list[float] = []
    for start in range(0, len(phrases), batch_size):
        chunk = phrases[start : start + batch_size]
        n = len(chunk)
        out = model(
            img.expand(n, -1, -1, -1),
            chunk,
            ref.expand(n, -1, -1, -1) if ref is not None else None,
            torch.ones(n, dtype=torch.bool, device=device) if ref is not None else None,
        )
        scores += out.image_score.float().cpu().tolist()
    return scores


SATURATION = 1e-6  # a score this close to 0 or 1 cannot move visibly when a word is left out


def flat_reason(values: list[tuple[str, float]], score: float | None) -> str | None:
    """Why every bar of a phrase is empty (no word moves the score), or None when some word does.

    Example:
        >>> flat_reason([("dark", 0.0), ("scratch", 0.0)], 1.0)
        'no word moves the score: it is saturated at 1.000000 (the softmax of its logits)'
        >>> flat_reason([("dark", 0.1)], 0.7) is None
        True
    """
    if any(abs(v) > 0 for _, v in values):
        return None
    if score is not None and min(score, 1.0 - score) <= SATURATION:
        return (
            f"no word moves the score: it is saturated at {score:.6f} (the softmax of its logits)"
        )
    return "no word moves the score: every phrase variant scores the same"


def word_bars(
    ax: Axes, phrase: str, values: list[tuple[str, float]], score: float | None = None
) -> None:
    """One horizontal bar per word, in phrase order: red raises the score, blue lowers it; a
    panel whose words all leave the score unchanged says why (:func:`flat_reason`)."""
    words = [w for w, _ in values]
    deltas = np.array([v for _, v in values])
    colours = ["#b00020" if d > 0 else "#1f5fa8" for d in deltas]
    y = np.arange(len(words))
    ax.barh(y, deltas, color=colours)
    ax.set_yticks(y, words, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_title(wrap(f'"{phrase}"', 70, 2), fontsize=8)
    ax.set_xlabel("score(full phrase) − score(without the word)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    reason = flat_reason(values, score)
    if reason is not None:
        ax.set_xlim(-1, 1)
        ax.text(0.5, 0.5, wrap(reason, 50), transform=ax.transAxes, ha="center", va="center",
                fontsize=8, color="#b00020")  # fmt: skip


def word_figure(rows: list[tuple[Sample, str, list[tuple[str, float]]]], title: str) -> Figure:
    """Per example: the image with its ground truth, and one bar per word of its phrase."""
    fig, axes = plt.subplots(
        len(rows),
        2,
        figsize=(9, 2.4 * len(rows) + 0.8),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 2.6]},
    )
    for (sample, phrase, values), (ax_img, ax_bar) in zip(rows, axes, strict=True):
        show_mask(ax_img, sample.image, sample.mask)
        ax_img.set_title(wrap(f"{sample.cls} / {sample.defect_type}", 28), fontsize=8)
        word_bars(ax_bar, phrase, values, sample.score)
    flat = sum(flat_reason(values, sample.score) is not None for sample, _, values in rows)
    if flat:
        title += f"\n{flat} of {len(rows)} phrases move the score by no visible amount (see panel)"
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
