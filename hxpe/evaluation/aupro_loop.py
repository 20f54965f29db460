"""The straightforward per-threshold AUPRO loop of cflow-ad / AnomalyCLIP (``cal_pro_score``).

Written from the published description (cflow-ad's and AnomalyCLIP's ``cal_pro_score``;
hxpe/LEDGER.md, "AUPRO convention"), for the benchmark in
:mod:`hxpe.evaluation.aupro_bench` and as a cross-check: at each of the 200 thresholds it binarises the
whole stack (both assignments), labels every mask again (``skimage.measure.label`` +
``regionprops``), counts covered pixels per region and rebuilds ``1 - masks`` for the FPR, step for step
as the original. It is slow on purpose; use :func:`hxpe.evaluation.metrics.aupro` for real work.
"""

from __future__ import annotations

import numpy as np
from skimage import measure

from hxpe.evaluation.metrics import ANOMALYCLIP_STEPS, anomalyclip_auc, anomalyclip_thresholds
from hxpe.progress import progress as progress_bar


def aupro_anomalyclip_loop(
    masks: np.ndarray,
    maps: np.ndarray,
    fpr_limit: float = 0.3,
    steps: int = ANOMALYCLIP_STEPS,
    progress: bool = False,
) -> float:
    """AnomalyCLIP-convention AUPRO of ``maps`` against binary ``masks`` (both ``[N, H, W]``)."""
    maps = np.asarray(maps, dtype=np.float32)
    masks = (np.asarray(masks) > 0).astype(
        np.float32
    )  # float 0/1, as the AnomalyCLIP test loop keeps them
    thresholds = anomalyclip_thresholds(maps.min(), maps.max(), steps)
    binary = np.zeros_like(maps, dtype=bool)
    pros, fprs = [], []
    for th in progress_bar(thresholds, desc="AUPRO loop", disable=not progress):
        binary[maps <= th], binary[maps > th] = 0, 1
        overlaps = []
        for binary_map, mask in zip(binary, masks, strict=True):
            for region in measure.regionprops(measure.label(mask, connectivity=2)):
                rows, cols = region.coords[:, 0], region.coords[:, 1]
                overlaps.append(binary_map[rows, cols].sum() / region.area)
        inverse = 1 - masks
        pros.append(np.mean(overlaps))
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
    return anomalyclip_auc(np.asarray(fprs), np.asarray(pros), fpr_limit)
