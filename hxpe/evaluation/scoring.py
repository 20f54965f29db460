"""Per-class metrics of one map store against the index's masks at the protocol resolution."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from hxpe.data.index import DatasetIndex
from hxpe.data.torch_dataset import load_mask
from hxpe.evaluation.config import EvaluationConfig
from hxpe.evaluation.maps import MapStore
from hxpe.evaluation.metrics import MetricSet, default_device, image_metrics, pixel_metrics
from hxpe.progress import progress

logger = logging.getLogger(__name__)

CLASS_COLUMNS = ["dataset", "cls", "metric", "value"]
SKIP_COLUMNS = ["dataset", "cls", "metric", "reason"]


def metrics_device(ev: EvaluationConfig) -> torch.device:
    """The device named by ``evaluation.metrics_device`` (``auto``: CUDA when available)."""
    if ev.metrics_device == "auto":
        return default_device()
    if ev.metrics_device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "evaluation.metrics_device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'."
        )
    return torch.device(ev.metrics_device)


def class_masks(index: DatasetIndex, image_ids: list[str], size: int) -> np.ndarray:
    """Binary masks ``[N, size, size]`` (bool) of the given images; normal images get zeros."""
    masks = np.zeros((len(image_ids), size, size), dtype=bool)
    paths = index.frame.set_index("image_id")["mask"]
    missing = [i for i in image_ids if i not in paths.index]
    if missing:
        raise KeyError(
            f"{len(missing)} stored maps are not in the index of {index.name} (first: "
            f"{missing[0]!r}); the index changed after inference: re-run with recompute_maps=True."
        )
    for k, image_id in enumerate(image_ids):
        rel = paths[image_id]
        if rel:
            masks[k] = load_mask(index.abs_path(rel), size)[0].numpy() > 0.5
    return masks


def class_metrics(
    store: MapStore, index: DatasetIndex, cls: str, ev: EvaluationConfig, device: torch.device
) -> MetricSet:
    """Image and pixel metrics of one class."""
    scores = store.scores()
    rows = scores[scores["cls"] == cls]
    result = image_metrics(rows["label"].to_numpy(), rows["image_score"].to_numpy(np.float64))
    ids, maps = store.class_maps(cls)
    if maps.shape[-2:] != (ev.image_size, ev.image_size):
        raise ValueError(
            f"maps in {store.root} are {maps.shape[-2:]} but evaluation.image_size is "
            f"{ev.image_size}; re-run inference with recompute_maps=True."
        )
    masks = class_masks(index, ids, ev.image_size)
    no_mask = int(((~masks.any(axis=(1, 2))) & (rows["label"].to_numpy() == 1)).sum())
    if no_mask:
        logger.warning(
            "%s/%s: %d anomalous images have an empty or missing mask; their pixels count as normal",
            index.name,
            cls,
            no_mask,
        )
    result.update(pixel_metrics(masks, maps, ev.aupro_conventions, ev.fpr_limit, device=device))
    return result


def evaluate_store(
    store: MapStore, index: DatasetIndex, ev: EvaluationConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class metrics (columns ``CLASS_COLUMNS``) and skipped metrics (``SKIP_COLUMNS``)."""
    device = metrics_device(ev)
    classes = sorted(store.scores()["cls"].unique())
    values, skipped = [], []
    for cls in progress(classes, desc=f"metrics {index.name}", leave=False):
        result = class_metrics(store, index, cls, ev, device)
        values += [(index.name, cls, m, v) for m, v in result.values.items()]
        skipped += [(index.name, cls, m, r) for m, r in result.skipped.items()]
        for metric, reason in result.skipped.items():
            logger.info("%s/%s: %s skipped (%s)", index.name, cls, metric, reason)
    return (
        pd.DataFrame(values, columns=CLASS_COLUMNS),
        pd.DataFrame(skipped, columns=SKIP_COLUMNS),
    )
