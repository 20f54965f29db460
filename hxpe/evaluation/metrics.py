"""Image and pixel metrics of zero-shot anomaly detection, exact and vectorised.

Ranking metrics (AUROC, AP, F1-max) come from one descending sort of the scores; tied scores form one
operating point, exactly as scikit-learn's ``roc_auc_score``, ``average_precision_score`` and
``precision_recall_curve`` treat them. AUPRO comes in the two conventions found in the literature
(hxpe/LEDGER.md, "AUPRO convention"):

- ``anomalyclip`` (AnomalyCLIP / APRIL-GAN / cflow-ad ``cal_pro_score``): 200 uniform thresholds from
  the global minimum, a pixel is positive when its score is ``> t``; PRO = mean over all ground-truth
  regions of the covered fraction; FPR = false positives / all normal pixels; points with FPR < limit
  are kept, their FPRs min-max rescaled to [0, 1] and integrated with the trapezoid rule.
- ``exact`` (MVTec AD reference, anomalib): the PRO curve at every distinct score, integrated up to
  FPR = limit with linear interpolation at the limit, divided by the limit.

Connected regions (8-connectivity, as ``skimage.measure.label`` and the MVTec reference) are labelled
once per mask; every threshold is then a histogram lookup, not a new labelling.

Undefined cases (one image class, no defect pixel, no normal pixel) raise
:class:`UndefinedMetricError`; :func:`image_metrics` and :func:`pixel_metrics` catch it and record the
reason in :attr:`MetricSet.skipped`, so tables never contain NaN.

Example:
    >>> import numpy as np
    >>> m = image_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    >>> round(m.values["image_auroc"], 3)
    0.75
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

logger = logging.getLogger(__name__)

AuproConvention = Literal["anomalyclip", "exact"]
AUPRO_CONVENTIONS: tuple[str, ...] = ("anomalyclip", "exact")
IMAGE_METRICS: tuple[str, ...] = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_RANKING_METRICS: tuple[str, ...] = ("pixel_auroc", "pixel_ap", "pixel_f1_max")
ANOMALYCLIP_STEPS = 200
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

ArrayLike = np.ndarray | torch.Tensor


class UndefinedMetricError(ValueError):
    """A metric that has no value for this input (e.g. AUROC with a single class)."""


@dataclass
class MetricSet:
    """Metric values (fractions in [0, 1]) plus the metrics skipped and why."""

    values: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def update(self, other: MetricSet) -> None:
        self.values.update(other.values)
        self.skipped.update(other.skipped)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _from_numpy(x: ArrayLike) -> torch.Tensor:
    """A tensor view of an array (copied only when NumPy marks it read-only)."""
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.require(x, requirements="W"))


def _as_tensor(x: ArrayLike, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = _from_numpy(x)
    return t.to(device=device, dtype=dtype).reshape(-1)


def _as_scores(x: ArrayLike, device: torch.device) -> torch.Tensor:
    """Flattened scores; float64 input stays float64 (no new ties), anything else becomes float32."""
    t = _from_numpy(x)
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.to(device=device, dtype=dtype).reshape(-1)


# --------------------------------------------------------------------------------------------------
# Ranking metrics: AUROC, AP, F1-max from one sort
# --------------------------------------------------------------------------------------------------


@dataclass
class _Curve:
    """Cumulative true/false positives at each distinct threshold, in descending score order."""

    tps: torch.Tensor  # float64 [T]
    fps: torch.Tensor  # float64 [T]


def _binary_curve(labels: torch.Tensor, scores: torch.Tensor) -> _Curve:
    """The operating points of ``score >= t`` for every distinct score ``t`` (scikit-learn's ties)."""
    if labels.numel() != scores.numel():
        raise ValueError(
            f"labels and scores differ in size ({labels.numel()} vs {scores.numel()}); "
            f"pass one score per label (pixel metrics: maps and masks of the same shape)."
        )
    if scores.numel() == 0:
        raise UndefinedMetricError("no samples to score")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(
            "scores contain NaN or inf; check the model output before computing metrics"
        )
    sorted_scores, order = torch.sort(scores, descending=True, stable=True)
    sorted_labels = labels[order]
    last = torch.nonzero(sorted_scores[1:] != sorted_scores[:-1]).reshape(-1)
    ends = torch.cat([last, torch.tensor([scores.numel() - 1], device=scores.device)])
    tps = torch.cumsum(sorted_labels.to(torch.int64), 0)[ends].to(torch.float64)
    fps = (ends + 1).to(torch.float64) - tps
    return _Curve(tps=tps, fps=fps)


def _check_two_classes(curve: _Curve, what: str) -> None:
    n_pos, n_neg = float(curve.tps[-1]), float(curve.fps[-1])
    if n_pos == 0 or n_neg == 0:
        kind = "anomalous" if n_pos == 0 else "normal"
        raise UndefinedMetricError(f"{what}: no {kind} samples (only one class present)")


def _auroc(curve: _Curve) -> float:
    tpr = torch.cat([curve.tps.new_zeros(1), curve.tps / curve.tps[-1]])
    fpr = torch.cat([curve.fps.new_zeros(1), curve.fps / curve.fps[-1]])
    return float(torch.trapezoid(tpr, fpr))


def _average_precision(curve: _Curve) -> float:
    precision = curve.tps / (curve.tps + curve.fps)
    recall = curve.tps / curve.tps[-1]
    d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((d_recall * precision).sum())


def _f1_max(curve: _Curve) -> float:
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P); a point with TP = 0 has F1 = 0.
    f1 = 2 * curve.tps / (curve.tps + curve.fps + curve.tps[-1])
    return float(f1.max())


def ranking_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    prefix: str,
    device: torch.device | str | None = None,
) -> MetricSet:
    """``<prefix>_auroc``, ``<prefix>_ap`` and ``<prefix>_f1_max`` from one sort.

    Skips all three (with the reason) when only one class is present.
    """
    dev = torch.device(device) if device is not None else default_device()
    names = [f"{prefix}_auroc", f"{prefix}_ap", f"{prefix}_f1_max"]
    try:
        curve = _binary_curve(_as_tensor(labels, dev, torch.bool), _as_scores(scores, dev))
        _check_two_classes(curve, prefix)
    except UndefinedMetricError as err:
        return MetricSet(skipped=dict.fromkeys(names, str(err)))
    values = [_auroc(curve), _average_precision(curve), _f1_max(curve)]
    return MetricSet(values=dict(zip(names, values, strict=True)))


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Exact ROC AUC (equals ``sklearn.metrics.roc_auc_score``); raises when one class only."""
    cpu = torch.device("cpu")
    curve = _binary_curve(_as_tensor(labels, cpu, torch.bool), _as_scores(scores, cpu))
    _check_two_classes(curve, "AUROC")
    return _auroc(curve)


def image_metrics(labels: ArrayLike, scores: ArrayLike) -> MetricSet:
    """Image AUROC, AP and F1-max of one class (scores computed on the CPU: few values)."""
    return ranking_metrics(labels, scores, prefix="image", device="cpu")


# --------------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------------


@dataclass
class Regions:
    """Connected ground-truth regions of a stack of masks, labelled once.

    ``normal`` flags the normal pixels of the flattened stack; ``defect_index`` holds the flat index
    of every defect pixel and ``defect_region`` its region id; ``areas`` is the pixel count per region.
    """

    normal: np.ndarray  # bool [N*H*W]
    defect_index: np.ndarray  # int64 [D]
    defect_region: np.ndarray  # int64 [D]
    areas: np.ndarray  # int64 [R]

    @property
    def n_regions(self) -> int:
        return len(self.areas)


def label_regions(masks: ArrayLike) -> Regions:
    """Label the 8-connected defect regions of each mask ``[N, H, W]`` once (scipy.ndimage.label)."""
    m = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be [N, H, W]; got shape {m.shape}")
    m = m > 0
    per_image = m.shape[1] * m.shape[2]
    index_parts, region_parts = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    offset = 0
    for i in np.flatnonzero(m.reshape(len(m), -1).any(axis=1)):
        labelled, n = ndimage.label(m[i], structure=_EIGHT_CONNECTED)
        flat = labelled.reshape(-1)
        pos = np.flatnonzero(flat)
        index_parts.append(pos + i * per_image)
        region_parts.append(flat[pos].astype(np.int64) - 1 + offset)
        offset += n
    defect_region = np.concatenate(region_parts)
    return Regions(
        normal=~m.reshape(-1),
        defect_index=np.concatenate(index_parts),
        defect_region=defect_region,
        areas=np.bincount(defect_region, minlength=offset).astype(np.int64),
    )


def _check_aupro_input(regions: Regions) -> None:
    if regions.n_regions == 0:
        raise UndefinedMetricError(
            "AUPRO: no defect region in the masks (all-normal or empty masks)"
        )
    if not regions.normal.any():
        raise UndefinedMetricError("AUPRO: no normal pixel in the masks, the FPR is undefined")


def anomalyclip_thresholds(lo: np.floating, hi: np.floating, steps: int) -> np.ndarray:
    """The thresholds of ``cal_pro_score``: ``np.arange(min, max, (max - min) / steps)``.

    ``lo`` and ``hi`` are the maps' float32 extremes, as in the original; NumPy returns float64
    thresholds, and a float32 map compared with them is compared in float64. Empty for a constant map.
    """
    if not hi > lo:
        return np.empty(0, dtype=np.float64)
    return np.arange(lo, hi, (hi - lo) / steps, dtype=np.float64)


def anomalyclip_auc(fprs: np.ndarray, pros: np.ndarray, fpr_limit: float) -> float:
    """Keep points with FPR < limit, min-max rescale their FPRs, trapezoid AUC (cal_pro_score).

    Defined where the original divides by zero or takes the min of nothing: no point under the
    limit gives 0.0 (nothing is detected inside the FPR window); a single FPR value under the limit
    gives the mean PRO of those points (1.0 for a perfect map).
    """
    keep = fprs < fpr_limit
    if not keep.any():
        logger.warning(
            "AUPRO (anomalyclip): no threshold reaches FPR < %s; reporting 0.0", fpr_limit
        )
        return 0.0
    f, p = fprs[keep].astype(np.float64), pros[keep].astype(np.float64)
    span = f.max() - f.min()
    if span == 0:
        return float(p.mean())
    f = (f - f.min()) / span
    # FPR falls as the threshold rises; integrate in threshold order (tied FPRs keep their order).
    direction = -1.0 if np.all(np.diff(f) <= 0) else 1.0
    if direction > 0 and not np.all(np.diff(f) >= 0):
        raise ValueError("AUPRO (anomalyclip): FPRs must be monotonic in threshold order")
    return float(direction * np.trapezoid(p, f))


def _float32_floor(thresholds: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold: for a float32 ``v``, ``v > t`` exactly when
    ``v > floor32(t)``, so the comparison can run in float32."""
    t32 = thresholds.astype(np.float32)
    above = t32.astype(np.float64) > thresholds
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _aupro_anomalyclip(
    regions: Regions, scores: torch.Tensor, fpr_limit: float, steps: int
) -> float:
    flat = scores.reshape(-1)
    lo, hi = flat.min().cpu().numpy(), flat.max().cpu().numpy()
    th = anomalyclip_thresholds(lo, hi, steps)
    if th.size == 0:
        raise UndefinedMetricError("AUPRO (anomalyclip): the maps are constant (min == max)")
    k, r, dev = th.size, regions.n_regions, flat.device
    # c(v) = number of thresholds t with t < v: the pixel is positive at thresholds 0 .. c-1.
    counts = torch.searchsorted(torch.as_tensor(_float32_floor(th), device=dev), flat)
    hist_all = torch.bincount(counts, minlength=k + 1)
    region = torch.as_tensor(regions.defect_region, device=dev)
    c_defect = counts[torch.as_tensor(regions.defect_index, device=dev)]
    hist = torch.bincount(region * (k + 1) + c_defect, minlength=r * (k + 1)).reshape(r, k + 1)
    hist_normal = hist_all - hist.sum(0)
    tail = hist.flip(1).cumsum(1).flip(1)  # tail[:, j] = pixels of the region with c >= j
    areas = torch.as_tensor(regions.areas, device=dev, dtype=torch.float64)
    pros = (tail[:, 1:].to(torch.float64) / areas[:, None]).mean(0)
    tail_normal = hist_normal.flip(0).cumsum(0).flip(0)
    fprs = tail_normal[1:].to(torch.float64) / int(regions.normal.sum())
    return anomalyclip_auc(fprs.cpu().numpy(), pros.cpu().numpy(), fpr_limit)


def truncated_auc(fprs: np.ndarray, pros: np.ndarray, fpr_limit: float) -> float:
    """Trapezoid area under a non-decreasing FPR curve up to ``fpr_limit``, linearly interpolated at
    the limit, divided by the limit (the MVTec AD reference's normalised AUPRO)."""
    inside = fprs <= fpr_limit
    x, y = fprs[inside], pros[inside]
    area = float(np.trapezoid(y, x))
    n = int(inside.sum())
    if n < len(fprs) and x[-1] < fpr_limit:
        x0, y0, x1, y1 = x[-1], y[-1], fprs[n], pros[n]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_lim) * (fpr_limit - x0)
    return float(area / fpr_limit)


def _aupro_exact(regions: Regions, scores: torch.Tensor, fpr_limit: float) -> float:
    return truncated_auc(*_pro_points(regions, scores, fpr_limit), fpr_limit)


def _pro_points(
    regions: Regions, scores: torch.Tensor, fpr_limit: float
) -> tuple[np.ndarray, np.ndarray]:
    """The exact (FPR, PRO) operating points, from (0, 0), down to the first one past ``fpr_limit``."""
    flat = scores.reshape(-1)
    dev = flat.device
    normal_scores = flat[torch.as_tensor(regions.normal, device=dev)]
    defect_scores = flat[torch.as_tensor(regions.defect_index, device=dev)]
    region = torch.as_tensor(regions.defect_region, device=dev)
    areas = torch.as_tensor(regions.areas, device=dev, dtype=torch.float64)
    n_normal = normal_scores.numel()
    # Only scores down to the first threshold past the FPR limit matter: the (k)-th largest normal
    # score with k = floor(limit * N0) + 1 already gives FPR > limit.
    k = int(np.floor(fpr_limit * n_normal)) + 1
    if k <= n_normal:
        cut = torch.kthvalue(normal_scores, n_normal - k + 1).values
        normal_scores = normal_scores[normal_scores >= cut]
        keep = defect_scores >= cut
        defect_scores, region = defect_scores[keep], region[keep]
    # Each normal pixel adds 1/N0 to the FPR; each defect pixel adds 1/(area * R) to the PRO.
    all_scores = torch.cat([normal_scores, defect_scores])
    fpr_step = torch.cat(
        [
            torch.full_like(normal_scores, 1.0 / n_normal, dtype=torch.float64),
            torch.zeros_like(defect_scores, dtype=torch.float64),
        ]
    )
    pro_step = torch.cat(
        [
            torch.zeros_like(normal_scores, dtype=torch.float64),
            1.0 / (areas[region] * regions.n_regions),
        ]
    )
    sorted_scores, order = torch.sort(all_scores, descending=True, stable=True)
    last = torch.nonzero(sorted_scores[1:] != sorted_scores[:-1]).reshape(-1)
    ends = torch.cat([last, torch.tensor([all_scores.numel() - 1], device=dev)])
    zero = areas.new_zeros(1)
    fprs = torch.cat([zero, torch.cumsum(fpr_step[order], 0)[ends]]).clamp_(max=1.0)
    pros = torch.cat([zero, torch.cumsum(pro_step[order], 0)[ends]]).clamp_(max=1.0)
    return fprs.cpu().numpy(), pros.cpu().numpy()


def pro_curve(
    masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve (FPR, PRO) of maps and masks ``[N, H, W]`` (exact convention).

    Every distinct map value is a threshold; the points run from (0, 0) up to the first one past
    ``fpr_limit``. ``truncated_auc(*pro_curve(m, s), 0.3)`` equals ``aupro(m, s, "exact", 0.3)``.

    Example:
        >>> masks = np.zeros((1, 4, 4)); masks[0, 0, :2] = 1
        >>> fpr, pro = pro_curve(masks, masks.astype(np.float32))
        >>> fpr.round(6).tolist(), pro.round(6).tolist()
        ([0.0, 0.0, 1.0], [0.0, 1.0, 1.0])
    """
    regions = label_regions(masks)
    _check_aupro_input(regions)
    scores = _as_tensor(maps, torch.device("cpu"), torch.float32)
    return _pro_points(regions, scores, fpr_limit)


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (FPR, TPR) from (0, 0) at every distinct score, as scikit-learn's without
    dropping collinear points; the trapezoid area under them equals :func:`auroc`.

    Example:
        >>> fpr, tpr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    dev = torch.device("cpu")
    curve = _binary_curve(_as_tensor(labels, dev, torch.bool), _as_scores(scores, dev))
    _check_two_classes(curve, "ROC")
    fpr = torch.cat([curve.fps.new_zeros(1), curve.fps / curve.fps[-1]])
    tpr = torch.cat([curve.tps.new_zeros(1), curve.tps / curve.tps[-1]])
    return fpr.numpy(), tpr.numpy()


def aupro(
    masks: ArrayLike,
    maps: ArrayLike,
    convention: AuproConvention = "anomalyclip",
    fpr_limit: float = 0.3,
    *,
    regions: Regions | None = None,
    steps: int = ANOMALYCLIP_STEPS,
    device: torch.device | str | None = None,
) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit`` for maps and masks ``[N, H, W]``.

    ``regions`` lets callers label the masks once for several conventions. Raises
    :class:`UndefinedMetricError` without defect regions or without normal pixels.

    Example:
        >>> masks = np.zeros((1, 8, 8)); masks[0, 2:4, 2:4] = 1
        >>> aupro(masks, masks.astype(np.float32), "exact")
        1.0
    """
    if convention not in AUPRO_CONVENTIONS:
        raise ValueError(f"unknown AUPRO convention {convention!r}; use one of {AUPRO_CONVENTIONS}")
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    shape = tuple(masks.shape)
    if tuple(maps.shape) != shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {shape} differ in shape")
    regions = regions if regions is not None else label_regions(masks)
    _check_aupro_input(regions)
    dev = torch.device(device) if device is not None else default_device()
    scores = _as_tensor(maps, dev, torch.float32)
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("maps contain NaN or inf; check the model output before computing AUPRO")
    if convention == "anomalyclip":
        return _aupro_anomalyclip(regions, scores, fpr_limit, steps)
    return _aupro_exact(regions, scores, fpr_limit)


def pixel_metrics(
    masks: ArrayLike,
    maps: ArrayLike,
    aupro_conventions: str | Sequence[str] = "anomalyclip",
    fpr_limit: float = 0.3,
    device: torch.device | str | None = None,
) -> MetricSet:
    """Pixel AUROC, AP, F1-max and ``pixel_aupro_<convention>`` for each requested convention.

    ``masks`` and ``maps`` are ``[N, H, W]`` (binary masks, float maps) of one class.
    """
    conventions = [aupro_conventions] if isinstance(aupro_conventions, str) else aupro_conventions
    dev = torch.device(device) if device is not None else default_device()
    mask_t = _from_numpy(masks)
    mask_t = mask_t > 0
    result = ranking_metrics(mask_t, maps, prefix="pixel", device=dev)
    regions = label_regions(mask_t.cpu())
    for conv in conventions:
        name = f"pixel_aupro_{conv}"
        try:
            result.values[name] = aupro(mask_t, maps, conv, fpr_limit, regions=regions, device=dev)  # type: ignore[arg-type]
        except UndefinedMetricError as err:
            result.skipped[name] = str(err)
    return result
