"""The demo-pretrained profile: demo data with real CLIP ViT-B/16 and DINOv2 ViT-S/14 weights.

Weights cannot be downloaded here, so the profile is tested through its random-weight path (the same
architecture, random init) and through the loaders reading a fake Hugging Face cache.
"""

from __future__ import annotations

import pytest
import torch

from hxpe.config import load_config
from hxpe.doctor import report, required_weight_keys, run_checks
from hxpe.model.loading import MissingWeightsError, load_clip, load_dinov2
from hxpe.model.model import build_paper_architecture_random
from hxpe.paths import repo_root
from hxpe.weights import CLIP_TAGS, clip_weight_key, weight_spec

PROFILE = repo_root() / "notebooks" / "params" / "demo-pretrained.yaml"


def _empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    return cache


def test_profile_pins_clip_b16_and_dinov2_and_uses_the_classical_agent():
    cfg = load_config(PROFILE)
    assert cfg.profile == "demo-pretrained"
    assert required_weight_keys(cfg) == ["clip-b16", "dinov2"]
    spec = weight_spec("clip-b16")
    assert spec.repo_id == "timm/vit_base_patch16_clip_224.openai"
    assert spec.revision == "977e3dd0ec55ab8da155f2fbeb6b5f54948b6e3d"
    assert clip_weight_key(cfg.model.clip.model_name, cfg.model.clip.pretrained) == "clip-b16"
    assert (cfg.agent.describe.backend, cfg.agent.extract.backend) == ("classical", "rules")
    assert [s.kind for s in cfg.data.datasets] == ["demo", "demo"]
    assert not cfg.uses_random_weights
    assert cfg.results_dir.name == "demo-pretrained"


def test_doctor_names_the_missing_weights_and_the_fetch_command(tmp_path, monkeypatch):
    _empty_cache(tmp_path, monkeypatch)
    text, ready = report(run_checks(load_config(PROFILE)))
    assert not ready
    assert "[MISSING] weights clip-b16: timm/vit_base_patch16_clip_224.openai" in text
    assert "make fetch-models MODELS=clip-b16" in text
    assert "make fetch-models MODELS=dinov2" in text
    assert "GPU" in text and "[MISSING] GPU" not in text  # the classical agent needs no GPU


def test_loaders_raise_with_the_fetch_command_on_an_empty_cache(tmp_path, monkeypatch):
    _empty_cache(tmp_path, monkeypatch)
    cfg = load_config(PROFILE).model
    with pytest.raises(MissingWeightsError, match="make fetch-models MODELS=clip-b16"):
        load_clip(cfg.clip)
    with pytest.raises(MissingWeightsError, match="make fetch-models MODELS=dinov2"):
        load_dinov2(cfg.vfm)


def test_loaders_read_the_pinned_snapshots_of_a_fake_cache(tmp_path, monkeypatch, caplog):
    """Real loading code on a cache laid out as `make fetch-models` leaves it, with tiny weights."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    from hxpe.model.clip_tower import ClipConfig

    cache = _empty_cache(tmp_path, monkeypatch)
    # CLIP: the tiny demo architecture stands in for ViT-B/16 under the clip-b16 pin.
    tiny = ClipConfig(
        model_name="hxpe-tiny-clip",
        pretrained=None,
        config_file="hxpe/model/configs/hxpe-tiny-clip.json",
        image_size=112,
        layers=[1, 2, 3, 4],
    )
    source, _ = load_clip(tiny, seed=5)
    monkeypatch.setitem(CLIP_TAGS, ("hxpe-tiny-clip", "openai"), "clip-b16")
    spec = weight_spec("clip-b16")
    snap = cache / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / spec.revision
    snap.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()},
        snap / next(p for p in spec.weight_patterns if p.endswith(".safetensors")),
    )
    with caplog.at_level("INFO", logger="hxpe.model.loading"):
        loaded, _ = load_clip(tiny.model_copy(update={"pretrained": "openai"}), seed=99)
    weights = snap / next(p for p in spec.weight_patterns if p.endswith(".safetensors"))
    assert caplog.messages[-1] == f"CLIP hxpe-tiny-clip loaded from {weights}"
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert open_clip.list_models()  # open_clip still importable after registering the config

    # DINOv2: a tiny config saved as the facebook/dinov2-small snapshot.
    dino_spec = weight_spec("dinov2")
    dsnap = cache / "models--facebook--dinov2-small" / "snapshots" / dino_spec.revision
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=56,
    )
    torch.manual_seed(3)
    Dinov2Model(config).save_pretrained(dsnap)
    vfm = load_config(PROFILE).model.vfm
    with caplog.at_level("INFO", logger="hxpe.model.loading"):
        dino = load_dinov2(vfm)
    assert dino.config.hidden_size == 32 and not any(p.requires_grad for p in dino.parameters())
    assert f"DINOv2 facebook/dinov2-small loaded from {dsnap}" in caplog.messages


def test_random_weight_path_of_the_profile_runs_one_batch():
    """The profile's architecture (ViT-B/16 at 224 px, DINOv2 ViT-S/14) with random weights."""
    cfg = load_config(PROFILE)
    model = build_paper_architecture_random(cfg.model_for("hxpe")).eval()
    assert len(model.visual.blocks) == 12 and model.visual.width == 768
    assert model.vfm is not None and model.vfm.dinov2.config.hidden_size == 384
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 128, 128, generator=g)
    with torch.no_grad():
        out = model(images, ["small dark scratch", None], references=images.flip(0))
    assert out.anomaly_map.shape == (2, 128, 128)
    assert len(out.layer_maps) == 4 and out.layer_maps[0].shape == (2, 2, 14, 14)
    assert out.vfm_prompt.shape == (2, 14, 14)
    assert torch.all((out.image_score >= 0) & (out.image_score <= 1))
