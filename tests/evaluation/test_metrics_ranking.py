"""Image and pixel ranking metrics (AUROC, AP, F1-max) against scikit-learn, ties included."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from hxpe.evaluation.metrics import (
    UndefinedMetricError,
    auroc,
    image_metrics,
    pixel_metrics,
    ranking_metrics,
)


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


@pytest.mark.parametrize("levels", [None, 5, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn(seed: int, levels: int | None) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + 0.7 * labels
    if levels is not None:  # heavy ties
        scores = np.round(scores * levels / 4) / levels
    m = image_metrics(labels, scores)
    assert m.skipped == {}
    assert m.values["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert m.values["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert m.values["image_f1_max"] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)


def test_pixel_metrics_match_sklearn_on_float16_maps() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((4, 24, 24)) < 0.1
    maps = (rng.random((4, 24, 24)) + 0.5 * masks).astype(np.float16)  # float16: many ties
    m = pixel_metrics(masks, maps, aupro_conventions=[], device="cpu")
    y, s = masks.ravel(), maps.astype(np.float32).ravel()
    assert m.values["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert m.values["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert m.values["pixel_f1_max"] == pytest.approx(sklearn_f1_max(y, s), abs=1e-9)


def test_torch_inputs_and_all_tied_scores() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    m = ranking_metrics(labels, torch.full((4,), 0.5), prefix="image", device="cpu")
    assert m.values["image_auroc"] == pytest.approx(0.5)
    assert m.values["image_ap"] == pytest.approx(0.5)
    assert m.values["image_f1_max"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_is_skipped_with_reason(label: int) -> None:
    m = image_metrics(np.full(5, label), np.arange(5.0))
    assert m.values == {}
    assert set(m.skipped) == {"image_auroc", "image_ap", "image_f1_max"}
    assert "only one class" in m.skipped["image_auroc"]
    with pytest.raises(UndefinedMetricError, match="only one class"):
        auroc(np.full(5, label), np.arange(5.0))


def test_empty_input_is_skipped_and_nan_is_an_error() -> None:
    assert "no samples" in image_metrics(np.array([]), np.array([])).skipped["image_auroc"]
    with pytest.raises(ValueError, match="NaN"):
        image_metrics(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="differ in size"):
        image_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2]))
