"""Which variants a figure compares and which images it shows (deterministic choices).

* HXPE is ``cfg.main_variant``. *Learnable-only* is the variant with the main variant's base whose
  overrides disable both enhancements (``explain.enabled`` and ``vfm.enabled`` false), e.g.
  ``adaclip`` in the paper profile; *WinCLIP-style* is the first variant with base ``winclip``.
  ``figures.learnable_variant`` / ``figures.winclip_variant`` name them explicitly.
* Cards split images at the F1-max threshold of the image scores of one dataset: a *hit* is an
  anomalous image at or above it, a *miss* an anomalous one below it, a *false alarm* a normal one
  at or above it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hxpe.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Role:
    """A variant in a comparison figure: its name in the profile and its label on the figure."""

    variant: str
    label: str


def learnable_only_variant(cfg: Config) -> str | None:
    """The base of the main variant with both enhancements off (see the module docstring)."""
    if cfg.figures.learnable_variant:
        return cfg.figures.learnable_variant
    base = cfg.model_for(cfg.main_variant).base
    for name in cfg.variants:
        m = cfg.model_for(name)
        if m.base == base and not m.explain.enabled and not m.vfm.enabled:
            return name
    return None


def winclip_variant(cfg: Config) -> str | None:
    """The first WinCLIP-style variant (see the module docstring)."""
    if cfg.figures.winclip_variant:
        return cfg.figures.winclip_variant
    return next((n for n in cfg.variants if cfg.model_for(n).base == "winclip"), None)


def comparison_roles(cfg: Config) -> list[Role]:
    """HXPE, learnable-only and WinCLIP-style, those the profile defines, without repeats."""
    candidates = [
        (cfg.main_variant, "HXPE"),
        (learnable_only_variant(cfg), "learnable only"),
        (winclip_variant(cfg), "WinCLIP-style"),
    ]
    roles: list[Role] = []
    for variant, label in candidates:
        if variant is None:
            log.info("figures: the profile defines no %s variant; it is left out", label)
        elif variant not in cfg.variants:
            raise KeyError(
                f"figures names variant {variant!r} as {label!r} but the profile defines only "
                f"{sorted(cfg.variants)}; fix figures.learnable_variant / figures.winclip_variant."
            )
        elif all(r.variant != variant for r in roles):
            roles.append(Role(variant, f"{label} ({variant})"))
    return roles


def round_robin(frame: pd.DataFrame, n: int, by: str = "cls") -> pd.DataFrame:
    """Up to ``n`` rows taking one row per ``by`` group in turn (groups and rows in frame order)."""
    if n <= 0 or frame.empty:
        return frame.iloc[:0]
    ranked = frame.assign(_turn=frame.groupby(by, sort=False).cumcount())
    order = ranked.sort_values("_turn", kind="stable")
    return order.head(n).drop(columns="_turn")


def qualitative_rows(scores: pd.DataFrame, n: int) -> pd.DataFrame:
    """About two thirds anomalous images (one class at a time), then normal ones."""
    n_normal = max(1, n // 3) if n >= 3 else 0
    anomalous = round_robin(scores[scores["label"] == 1], n - n_normal)
    normal = round_robin(scores[scores["label"] == 0], n - len(anomalous))
    return pd.concat([anomalous, normal], ignore_index=True)


def f1_max_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the highest F1 (ties: the highest threshold)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.sum() == 0:
        return float(scores.max()) if len(scores) else 0.5
    thresholds = np.unique(scores)
    above = scores[None, :] >= thresholds[:, None]
    tp = (above & labels).sum(1)
    fp = (above & ~labels).sum(1)
    fn = labels.sum() - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(thresholds[best])


def card_rows(scores: pd.DataFrame, per_kind: int) -> tuple[dict[str, pd.DataFrame], float]:
    """Hits (highest scores first), misses (lowest first), false alarms (highest first)."""
    t = f1_max_threshold(scores["label"].to_numpy(), scores["image_score"].to_numpy())
    flagged = scores["image_score"] >= t
    anomalous = scores["label"] == 1
    by_score = scores.assign(_s=scores["image_score"])
    kinds = {
        "hit": by_score[anomalous & flagged].sort_values("_s", ascending=False, kind="stable"),
        "miss": by_score[anomalous & ~flagged].sort_values("_s", kind="stable"),
        "false alarm": by_score[~anomalous & flagged].sort_values(
            "_s", ascending=False, kind="stable"
        ),
    }
    return {k: v.head(per_kind).drop(columns="_s") for k, v in kinds.items()}, t
