"""The bf16 model paths under CUDA autocast's dtype policy, emulated on CPU (tests/support/cuda_autocast.py):
the DINOv2 prompt's statistics, the evaluation stage's inference with ``precision: bf16``, and every
model path of ``make gpu-smoke`` (issue 23, item 1)."""

from __future__ import annotations

import re

import pytest
import torch

from hxpe import gpu_smoke
from hxpe.config import load_config
from hxpe.model.dinov2_prompt import VfmPrompter, own_nn_distance
from hxpe.model.loading import load_dinov2
from hxpe.model.model import build_model
from hxpe.paths import repo_root

from support.cuda_autocast import QUANTILE_MESSAGE, cuda_autocast_policy

DEMO = repo_root() / "notebooks" / "params" / "demo.yaml"
BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def test_the_policy_refuses_what_cuda_refuses_and_upcasts_what_cuda_upcasts():
    x = torch.rand(4, 8)
    with torch.autocast(**BF16):  # CPU autocast alone: quantile is upcast, softmax stays bf16
        assert (x @ x.T).quantile(0.5).dtype == torch.float32
        assert (x @ x.T).softmax(-1).dtype == torch.bfloat16
    policy = cuda_autocast_policy()
    with policy, torch.autocast(**BF16):
        y = x @ x.T
        assert y.dtype == torch.bfloat16  # matmuls: bf16 under both autocasts
        with pytest.raises(RuntimeError, match=re.escape(QUANTILE_MESSAGE)):
            y.quantile(0.5)
        with pytest.raises(RuntimeError, match=re.escape(QUANTILE_MESSAGE)):
            torch.nanquantile(y, 0.5)
        with pytest.raises(RuntimeError, match="not implemented for 'bfloat16'"):
            torch.linalg.inv(y)
        assert y.softmax(-1).dtype == torch.float32  # CUDA's fp32 list
        assert torch.nn.functional.layer_norm(y, (4,)).dtype == torch.float32
        assert y.sum(dtype=torch.bfloat16).dtype == torch.bfloat16  # an explicit dtype wins
        assert y.float().quantile(0.5).dtype == torch.float32  # float32 input: allowed
    assert policy.refused == ["quantile", "nanquantile", "linalg_inv"]


@pytest.fixture(scope="module")
def prompter() -> VfmPrompter:
    vfm = load_config(DEMO).model_for("hxpe").vfm
    return VfmPrompter(load_dinov2(vfm), vfm).eval()


def test_the_unfixed_statistic_fails_under_the_policy():
    """What stage 05 did before the fix, and why only a GPU saw it."""
    feats = torch.nn.functional.normalize(torch.rand(2, 16, 8), dim=-1)
    quantile_refused = pytest.raises(RuntimeError, match=re.escape(QUANTILE_MESSAGE))
    with cuda_autocast_policy(), torch.autocast(**BF16), quantile_refused:
        own_nn_distance(feats, (4, 4)).quantile(0.9, dim=1)


def test_prompt_statistics_are_float32_under_the_policy(prompter):
    torch.manual_seed(0)
    images, refs = torch.rand(3, 3, 112, 112), torch.rand(3, 3, 112, 112)
    has = torch.tensor([True, False, True])
    full = prompter(images, (8, 8), refs, has).prompt
    with cuda_autocast_policy(), torch.autocast(**BF16):
        _, scales = prompter.reference_calibrated(refs, (8, 8))
        half = prompter(images, (8, 8), refs, has).prompt
    assert scales.dtype == torch.float32 and half.dtype == torch.float32
    assert half.shape == full.shape == (3, 8, 8)
    # the same map up to DINOv2's bf16 features (the statistics themselves are float32)
    assert torch.allclose(half, full, atol=0.1), float((half - full).abs().max())


def test_gpu_smoke_model_paths_pass_under_the_policy(tmp_path):
    cfg = load_config(DEMO)
    model = build_model(cfg.model_for("hxpe")).eval()
    assert model.vfm is not None  # the DINOv2 prompt with references: the path that crashed
    with cuda_autocast_policy():
        rows = gpu_smoke.paper_checks(tmp_path, model, image_size=64, batch=4, train_batch=2)
    assert [r.ok for r in rows] == [True, True], [r.detail for r in rows]
    assert rows[0].numbers["images"] == 8 and rows[0].images_per_s > 0
    table = gpu_smoke.table(rows)
    assert "infer_fast bf16, batch 4" in table and "PASS" in table


@pytest.mark.parametrize("variant", list(load_config(DEMO).variants))
def test_evaluation_stage_in_bf16_passes_under_the_policy(variant, tmp_path):
    """Stage 05's inference (``infer_dataset``, the fast path) for every variant of the demo, with
    ``evaluation.precision: bf16``, phrases and the variant's reference rule."""
    from hxpe.data.fixtures import planted_index
    from hxpe.data.index import select_references
    from hxpe.evaluation.maps import MapStore
    from hxpe.evaluation.protocol import infer_dataset

    cfg = load_config(DEMO)
    ecfg = cfg.evaluation.model_copy(update={"precision": "bf16", "num_workers": 0})
    model_cfg = cfg.model_for(variant)
    model = build_model(model_cfg).eval()
    index = planted_index(tmp_path / "data")
    refs = select_references(index, cfg.reference_rule_for(variant))
    phrases = {i: "a dark scratch" for i in index.split("test")["image_id"]}
    with cuda_autocast_policy():
        out = infer_dataset(model, index, phrases, refs, ecfg, tmp_path / "maps", key="k")
    store = MapStore(out)
    scores = store.scores()
    assert len(scores) == len(index.split("test")) == 8
    assert scores["image_score"].notna().all()
    first = scores["image_id"].iloc[0]
    assert store.read_map(first).shape == (ecfg.image_size, ecfg.image_size)
    has_prompt = store.read_vfm_prompt(first) is not None
    assert has_prompt == model_cfg.vfm.enabled
