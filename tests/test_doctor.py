"""`make doctor` and the weights registry."""

from __future__ import annotations

import pytest

from hxpe.config import load_config
from hxpe.doctor import report, required_weight_keys, run_checks
from hxpe.paths import repo_root
from hxpe.weights import local_snapshot, registry, require_snapshot, weight_spec

PAPER = repo_root() / "notebooks" / "params" / "paper.yaml"


def test_registry_pins_every_model():
    reg = registry()
    assert {"clip", "dinov2", "vlm_awq", "vlm", "llm"} <= set(reg)
    assert reg["clip"].repo_id == "timm/vit_large_patch14_clip_336.openai"
    for key in ("clip", "dinov2", "vlm", "llm"):
        assert reg[key].revision and len(reg[key].revision) == 40


def test_paper_profile_needs_all_models_and_reports_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HXPE_DATA_ROOT", str(tmp_path / "no-data"))
    monkeypatch.setenv("HXPE_RELEASED_DIR", str(tmp_path / "no-released"))
    cfg = load_config(PAPER)
    keys = required_weight_keys(cfg)
    assert {"clip", "vlm_awq", "llm"} <= set(keys)
    text, ready = report(run_checks(cfg))
    assert not ready
    assert "make fetch-models MODELS=clip" in text
    assert "Qwen/Qwen2.5-7B-Instruct" in text
    assert "dataset mvtec" in text and "mvtec.com" in text
    assert "released released_adaclip (mvtec)" in text
    assert "make fetch-models MODELS=released_anomalyclip" in text
    assert "NOT READY" in text


def test_local_snapshot_finds_a_cached_revision(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    spec = weight_spec("dinov2")
    assert local_snapshot(spec) is None
    with pytest.raises(FileNotFoundError, match="make fetch-models MODELS=dinov2"):
        require_snapshot("dinov2")
    snap = tmp_path / "models--facebook--dinov2-small" / "snapshots" / spec.revision
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert local_snapshot(spec) is None  # no weight file yet
    (snap / "model.safetensors").write_bytes(b"x")
    assert local_snapshot(spec) == snap


def test_demo_profile_needs_no_pinned_weights():
    cfg = load_config(repo_root() / "notebooks" / "params" / "demo.yaml")
    assert required_weight_keys(cfg) == []
    text, ready = report(run_checks(cfg))
    assert ready, text
