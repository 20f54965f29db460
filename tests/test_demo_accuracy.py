"""End-to-end accuracy of an executed demo run (its trained small backbones, make nbtest's run or
`make demo`): floors the random-init demo could never reach, and each switch of the method acting.

These read a finished run, so ``make unit`` deselects them (marker ``demo_results``); ``make nbtest``
runs them on ``build/nbval/demo`` right after executing the notebooks, and
``HXPE_DEMO_RESULTS=results/demo pytest -m demo_results tests/test_demo_accuracy.py`` checks a
``make demo``.

Floors: the issue that introduced the trained backbones asked for image AUROC >= 75, pixel AUROC
>= 85 and AUPRO >= 50 on demo_target (main variant, x100), and :data:`FLOORS` pins them. The
backbones and the demo's settings were chosen on held-out pretraining scenes, on demo_aux and on
validation sets drawn from other demo seeds (`python -m hxpe.backbones.demo_validation`, seeds
7-22: 84.0 / 94.9 / 83.0 on average, per-seed sd 6.2 / 1.1 / 4.1 with 27 test images a set), never
on the target (hxpe/LEDGER.md). The target then measures image AUROC 77.8, pixel AUROC 93.0, AUPRO
79.0 (random-init backbones: 51.9, 53.7, 27.0; the first trained backbones: 57.4, 81.6, 40.8).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import default_collate

from hxpe.agent import phrases_for_rule
from hxpe.config import load_config
from hxpe.data.index import load_index, select_references
from hxpe.data.torch_dataset import IndexDataset, phrases_from_batch
from hxpe.evaluation.metrics import auroc
from hxpe.model.dinov2_prompt import KeyBias
from hxpe.model.inference import model_for_evaluation
from hxpe.paths import repo_root

pytestmark = pytest.mark.demo_results

RESULTS = Path(os.environ.get("HXPE_DEMO_RESULTS", repo_root() / "build" / "nbval" / "demo"))
DIRECTION, TARGET = "aux_to_target", "demo_target"
FLOORS = {"image_auroc": 0.75, "pixel_auroc": 0.85, "pixel_aupro_anomalyclip": 0.50}
# reached: 0.778, 0.930, 0.790 (random-init backbones: 0.519, 0.537, 0.270)


@pytest.fixture(scope="module")
def cfg():
    if not (RESULTS / "metrics" / "per_dataset.csv").is_file():
        pytest.fail(
            f"No executed demo in {RESULTS}: run `make nbtest` (or `make demo` and set "
            f"HXPE_DEMO_RESULTS=results/demo)."
        )
    return load_config(repo_root() / "notebooks" / "params" / "demo.yaml")


@pytest.mark.parametrize("metric", sorted(FLOORS))
def test_main_variant_reaches_the_floors_on_the_target(cfg, metric):
    table = pd.read_csv(RESULTS / "metrics" / "per_dataset.csv")
    row = table[(table.variant == cfg.main_variant) & (table.dataset == TARGET)]
    value = float(row.loc[row.metric == metric, "value"].iloc[0])
    assert value >= FLOORS[metric], f"{cfg.main_variant} {metric} on {TARGET}: {100 * value:.1f}"


def test_the_ablation_table_shows_the_main_row(cfg):
    text = (RESULTS / "tables" / "ablation.md").read_text()
    assert "small backbones trained here on generated scenes" in text
    assert f"| {cfg.main_variant} " in text or f"| **{cfg.main_variant}** " in text


def test_training_lowers_the_loss(cfg):
    loss = pd.read_csv(RESULTS / "checkpoints" / DIRECTION / cfg.main_variant / "loss.csv")
    by_epoch = loss.groupby("epoch")["total"].mean()
    assert len(by_epoch) >= 2
    # Measured: epoch means 4.42 -> 3.73 (x0.84); the first trained backbones gave 4.75 -> 4.08.
    assert by_epoch.iloc[-1] < 0.9 * by_epoch.iloc[0], by_epoch.to_dict()


@pytest.fixture(scope="module")
def target_batch(cfg):
    """Every test image of the target with its phrase and reference, as the protocol feeds them."""
    index = load_index(RESULTS / "index" / TARGET)
    rule = cfg.reference_rule_for(cfg.main_variant)
    phrases = phrases_for_rule(RESULTS, rule)
    ds = IndexDataset(
        index,
        cfg.evaluation.image_size,
        split="test",
        phrases=phrases,
        references=select_references(index, rule),
    )
    return default_collate([ds[i] for i in range(len(ds))])


def _maps(model, batch, phrases=None) -> np.ndarray:
    with torch.no_grad():
        out = model(
            batch["image"],
            phrases_from_batch(batch) if phrases is None else phrases,
            batch["reference"],
            batch["has_reference"],
            list(batch["cls"]),
        )
    return out.anomaly_map.numpy()


def _pixel_auroc(maps: np.ndarray, batch) -> float:
    return auroc(batch["mask"].numpy().reshape(-1) > 0.5, maps.reshape(-1))


@pytest.fixture(scope="module")
def main_model(cfg):
    return model_for_evaluation(cfg, DIRECTION, cfg.main_variant, RESULTS).eval()


def test_the_dinov2_key_bias_changes_the_maps(main_model, target_batch):
    base = _maps(main_model, target_batch)
    biases = [m for m in main_model.modules() if isinstance(m, KeyBias)]
    assert biases, "the main variant has no DINOv2 key bias"
    beta = biases[0].beta.clone()
    try:
        for m in biases:
            m.beta.data.zero_()
        unbiased = _maps(main_model, target_batch)
    finally:
        for m in biases:
            m.beta.data.copy_(beta)
    change = np.abs(base - unbiased).mean() / np.abs(base).mean()
    with_bias, without = _pixel_auroc(base, target_batch), _pixel_auroc(unbiased, target_batch)
    print(
        f"key bias: relative map change {change:.5f}; pixel AUROC {with_bias:.3f} vs {without:.3f}"
    )
    # measured: 0.0078 with beta 1 on the demo (pixel AUROC 0.927 either way; 0.0024 with the first
    # trained backbones): the switch acts, weakly, as the small CLIP's attention logits dwarf
    # beta * M; a bias that never reached the attention would leave 0
    assert change > 1e-4


def test_the_explainable_prompt_changes_the_maps(main_model, target_batch):
    phrases = phrases_from_batch(target_batch)
    assert sum(p is not None for p in phrases) >= 3, "too few gated phrases to test"
    base = _maps(main_model, target_batch)
    plain = _maps(main_model, target_batch, phrases=[None] * len(phrases))
    has = np.array([p is not None for p in phrases])
    change = np.abs(base[has] - plain[has]).mean() / np.abs(base[has]).mean()
    print(f"explainable prompt: relative map change {change:.3f} on {has.sum()} images")
    assert change > 0.02
    # no phrase: the same maps (the batch's text length differs: float rounding only)
    np.testing.assert_allclose(base[~has], plain[~has], rtol=5e-3, atol=1e-9)
