"""OpenAI CLIP weights are never run with GELU (open_clip's plain model names)."""

from __future__ import annotations

import pytest

from hxpe.model.clip_tower import ClipConfig
from hxpe.model.loading import MissingWeightsError, load_clip, require_quickgelu
from hxpe.weights import weight_spec


def _cache_with_clip_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    spec = weight_spec("clip")
    snap = tmp_path / ("models--" + spec.repo_id.replace("/", "--")) / "snapshots" / spec.revision
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"not read: the guard comes first")


def test_gelu_model_with_openai_weights_is_refused_before_loading(tmp_path, monkeypatch):
    _cache_with_clip_file(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="Use model_name: 'ViT-L-14-336-quickgelu'"):
        load_clip(ClipConfig(model_name="ViT-L-14-336", pretrained="openai"))


def test_quickgelu_name_and_random_init_pass_the_guard(tmp_path, monkeypatch):
    require_quickgelu("ViT-L-14-336-quickgelu", "openai")
    require_quickgelu("ViT-L-14-336", None)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError, match="make fetch-models"):
        load_clip(ClipConfig(model_name="ViT-L-14-336-quickgelu", pretrained="openai"))
