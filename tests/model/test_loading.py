"""Loading real weights (hxpe/model/loading.py): what a missing or unpinned weight says."""

from __future__ import annotations

import pytest

from hxpe.model.loading import MissingWeightsError, load_clip, load_dinov2
from hxpe.model.tiny import tiny_model_config


def test_missing_weights_give_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    cfg = tiny_model_config("adaclip")
    real = cfg.clip.model_copy(
        update={"model_name": "ViT-L-14-336-quickgelu", "pretrained": "openai", "config_file": None}
    )
    with pytest.raises(MissingWeightsError) as err:
        load_clip(real)
    msg = str(err.value)
    assert "timm/vit_large_patch14_clip_336.openai" in msg
    assert "81e38efc4637de5023b10e75a7f9bd1c6fa6b010" in msg
    assert str(tmp_path) in msg and "make fetch-models" in msg
    with pytest.raises(MissingWeightsError, match="facebook/dinov2-small"):
        load_dinov2(cfg.vfm.model_copy(update={"config_file": None}))


def test_an_unpinned_dinov2_is_refused_with_what_to_do() -> None:
    cfg = tiny_model_config("anomalyclip").vfm.model_copy(
        update={"config_file": None, "model_id": "someone/dinov2-huge"}
    )
    with pytest.raises(ValueError) as err:
        load_dinov2(cfg)
    assert str(err.value) == (
        "model.vfm.model_id 'someone/dinov2-huge' is not pinned in hxpe/weights.yaml; add it there "
        "(repo_id, revision, weight_patterns) or use facebook/dinov2-small."
    )
