"""The glue (hxpe/model/model.py) on tiny random-init backbones: shapes per base, the image score, the map, gradients, building."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from hxpe.model.loading import load_clip
from hxpe.model.model import HXPEModel, build_model, gaussian_blur
from hxpe.model.tiny import tiny_model_config

from support.models import BASES, images, tiny


@pytest.mark.parametrize("base", BASES)
def test_output_shapes_per_base(base: str) -> None:
    model = tiny(base)
    with torch.no_grad():
        out = model(images(3, size=120), ["scratch", None, ""], references=images(3, 120, seed=1))
    assert out.image_score.shape == (3,)
    assert ((out.image_score >= 0) & (out.image_score <= 1)).all()
    assert out.anomaly_map.shape == (3, 120, 120)
    assert out.image_logits.shape == (3, 2)
    if base == "winclip":  # hxpe.model.bases.winclip: no per-layer maps, no DINOv2 prompt
        assert out.layer_maps == [] and out.vfm_prompt is None
        return
    assert len(out.layer_maps) == 4
    for probs in out.layer_maps:
        assert probs.shape == (3, 2, 8, 8)
        assert torch.allclose(probs.sum(dim=1), torch.ones(3, 8, 8), atol=1e-5)
    assert out.vfm_prompt.shape == (3, 8, 8)
    assert out.image_logits.shape == (3, 2)


def test_paper_architecture_random_is_the_paper_config_without_weights(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import hxpe.model.model as hxpe_module
    from hxpe.model.config import ModelConfig
    from hxpe.model.loading import CONFIG_DIR

    built: list[ModelConfig] = []
    monkeypatch.setattr(hxpe_module, "assemble", lambda cfg: built.append(cfg) or "model")
    base = ModelConfig(sigma=2.0)
    base = base.model_copy(  # a CLIP config file of its own must not survive into the paper model
        update={"clip": base.clip.model_copy(update={"config_file": "my-clip.json"})}
    )
    with caplog.at_level(logging.WARNING, logger=hxpe_module.log.name):
        assert hxpe_module.build_paper_architecture_random(base) == "model"
        hxpe_module.build_paper_architecture_random()
    cfg, default = built
    assert cfg.clip.pretrained is None and cfg.clip.config_file is None
    assert cfg.vfm.config_file == str(CONFIG_DIR / "dinov2-small.json")
    assert cfg.clip.model_name == "ViT-L-14-336-quickgelu" and cfg.sigma == 2.0
    assert base.clip.pretrained == "openai" and base.vfm.config_file is None  # not mutated
    assert base.clip.config_file == "my-clip.json"
    assert default.model_dump() == cfg.model_dump() | {"sigma": ModelConfig().sigma}
    assert (
        caplog.messages
        == [
            "Building the paper architecture (ViT-L-14-336-quickgelu + DINOv2 ViT-S/14) with RANDOM "
            "WEIGHTS: for dry runs and benchmarks only."
        ]
        * 2
    )


def test_build_logs_the_trainable_parameter_count(caplog: pytest.LogCaptureFixture) -> None:
    """AnomalyCLIP tiny: 2 contexts x 12 tokens x 64 + 1 deep prompt x 4 tokens x 64 = 1792."""
    with caplog.at_level(logging.INFO, logger="hxpe.model.model"):
        build_model(tiny_model_config("anomalyclip"))
    assert "HXPE model (base anomalyclip): 1792 trainable parameters" in caplog.messages


def test_adaclip_map_is_the_softmax_of_the_mean_logits_upsampled_with_align_corners() -> None:
    model = tiny("adaclip", sigma=0.0)
    with torch.no_grad():
        out = model(images(1, size=100), ["dent"])
    up = [
        F.interpolate(lg, size=(100, 100), mode="bilinear", align_corners=True)
        for lg in out.layer_logits
    ]
    q = torch.stack(up).mean(0).softmax(dim=1)
    assert torch.allclose(out.anomaly_map, (q[:, 1] + 1 - q[:, 0]) / 2, atol=1e-5)


@pytest.mark.parametrize("base", ["adaclip", "anomalyclip"])
def test_gradients_reach_trainable_parameters_only(base: str) -> None:
    model = build_model(tiny_model_config(base)).train()
    out = model(images(2), ["dent", None], references=images(2, seed=3))
    (out.layer_maps[0][:, 1].mean() + out.image_logits[:, 1].sum()).backward()
    trainable = model.trainable_state()
    assert trainable
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    for module in model.backbones():
        for name, p in module.named_parameters():
            assert not p.requires_grad and p.grad is None, name
        assert not module.training


@pytest.mark.parametrize("mode", ["text", "text_max"])
def test_score_modes(mode: str) -> None:
    model = tiny("adaclip", score_mode=mode)
    with torch.no_grad():
        out = model(images(2), [None, None])
    text_prob = out.image_logits.softmax(-1)[:, 1]
    if mode == "text":
        assert torch.allclose(out.image_score, text_prob)
    else:
        expected = (text_prob + out.anomaly_map.flatten(1).amax(1)) / 2
        assert torch.allclose(out.image_score, expected)


def test_gaussian_blur_matches_scipy() -> None:
    maps = torch.rand(2, 30, 41)
    ours = gaussian_blur(maps, 4.0).numpy()
    theirs = np.stack([gaussian_filter(m, sigma=4) for m in maps.numpy()])
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.slow
def test_paper_architecture_builds_with_random_weights_and_runs() -> None:
    from hxpe.model.config import ModelConfig
    from hxpe.model.model import build_paper_architecture_random

    cfg = ModelConfig.model_validate({"clip": {"image_size": 336}})
    model = build_paper_architecture_random(cfg).eval()
    assert len(model.visual.blocks) == 24 and model.visual.width == 1024
    assert model.vfm.dinov2.config.hidden_size == 384
    with torch.no_grad():
        out = model(images(1, size=336), ["scratch"], references=images(1, 336, seed=2))
    assert out.anomaly_map.shape == (1, 336, 336)
    assert [m.shape for m in out.layer_maps] == [(1, 2, 24, 24)] * 4


def test_image_features_are_the_unit_cls_feature_of_the_score() -> None:
    """AnomalyCLIP scores the CLS feature against the text: image_logits = f · t / τ."""
    model = tiny("anomalyclip")
    with torch.no_grad():
        out = model(images(2), ["scratch", None])
    f, t = out.image_features, out.text_features
    assert f.shape == (2, 32) and torch.allclose(f.norm(dim=-1), torch.ones(2), atol=1e-5)
    expected = torch.einsum("bd,bkd->bk", f, t) / model.cfg.arithmetic.temperature
    assert torch.allclose(out.image_logits, expected, atol=1e-5)


def test_constructors_say_what_is_wrong(caplog: pytest.LogCaptureFixture) -> None:
    """WinCLIP is not an HXPEModel; layers beyond the tower; random CLIP weights are announced."""
    from hxpe.model.clip_tower import VisualEncoder

    cfg = tiny_model_config("winclip", explain={"enabled": False}, vfm={"enabled": False})
    with caplog.at_level(logging.WARNING, logger="hxpe.model.loading"):
        clip, tokenizer = load_clip(cfg.clip)
    assert [r.getMessage() for r in caplog.records if r.name == "hxpe.model.loading"] == [
        "CLIP hxpe-tiny-clip has RANDOM weights (pretrained=None, seed 0): outputs carry no "
        "meaning beyond tests and dry runs."
    ]
    with pytest.raises(ValueError) as err:
        HXPEModel(cfg, clip, tokenizer, None)
    assert str(err.value) == (
        "Base 'winclip' is training-free, a model of its own; build it with "
        "hxpe.model.model.build_model, not HXPEModel."
    )
    with pytest.raises(ValueError) as err:
        VisualEncoder(clip.visual, [1, 9])
    assert str(err.value).startswith("model.clip.layers [1, 9] asks for block 9, but this CLIP has")


def test_images_and_references_of_another_size_are_resized_bilinearly_without_corners() -> None:
    """An input off the CLIP size is resized once, bilinear with align_corners=False (both the
    images and the references): the same as handing over the resized tensors."""
    model = tiny("anomalyclip", sigma=0.0)
    x, refs = images(2, size=120), images(2, size=120, seed=5)

    def resized(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(112, 112), mode="bilinear", align_corners=False)

    with torch.no_grad():
        big = model(x, [None, "dent"], references=refs)
        small = model(resized(x), [None, "dent"], references=resized(refs))
    assert torch.equal(big.vfm_prompt, small.vfm_prompt)
    assert torch.equal(big.image_score, small.image_score)
    assert torch.equal(big.layer_maps[0], small.layer_maps[0])
