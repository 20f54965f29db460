"""The HXPE model on tiny random-init backbones: shapes, prompts, attention changes, DINOv2 prompts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from hxpe.model.attention import DualPathAttention, multihead_attention
from hxpe.model.hxpe import HXPEModel, build_model
from hxpe.model.loading import MissingWeightsError, load_clip, load_dinov2
from hxpe.model.maps import gaussian_blur
from hxpe.model.tiny import tiny_model_config

BASES = ["adaclip", "anomalyclip", "winclip"]


_MODELS: dict[str, HXPEModel] = {}


def tiny(base: str, **overrides: object) -> HXPEModel:
    """A tiny model in eval mode, built once per configuration within this module."""
    key = json.dumps([base, overrides], sort_keys=True)
    if key not in _MODELS:
        _MODELS[key] = build_model(tiny_model_config(base, **overrides)).eval()
    return _MODELS[key]


def images(n: int = 2, size: int = 112, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


@pytest.mark.parametrize("base", BASES)
def test_output_shapes_per_base(base: str) -> None:
    model = tiny(base)
    with torch.no_grad():
        out = model(images(3, size=120), ["scratch", None, ""], references=images(3, 120, seed=1))
    assert out.image_score.shape == (3,)
    assert ((out.image_score >= 0) & (out.image_score <= 1)).all()
    assert out.anomaly_map.shape == (3, 120, 120)
    assert out.image_logits.shape == (3, 2)
    if base == "winclip":  # hxpe.model.winclip: no per-layer maps, no DINOv2 prompt
        assert out.layer_maps == [] and out.vfm_prompt is None
        return
    assert len(out.layer_maps) == 4
    for probs in out.layer_maps:
        assert probs.shape == (3, 2, 8, 8)
        assert torch.allclose(probs.sum(dim=1), torch.ones(3, 8, 8), atol=1e-5)
    assert out.vfm_prompt.shape == (3, 8, 8)
    assert out.image_logits.shape == (3, 2)


def test_four_layers_give_different_tokens() -> None:
    model = tiny("anomalyclip")
    with torch.no_grad():
        feats = model.visual(images(1))
    assert len(feats.patches) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(feats.patches[i], feats.patches[j], atol=1e-4)


def test_vv_attention_differs_from_qk_and_is_attached_to_last_blocks() -> None:
    model = tiny("anomalyclip")
    blocks = model.visual.blocks
    assert [isinstance(b.attn, DualPathAttention) for b in blocks] == [False, True, True, True]
    x = torch.randn(2, 10, blocks[1].attn.mha.embed_dim)
    qk, vv = blocks[1].attn.dual(x)
    assert qk.shape == vv.shape == x.shape
    assert not torch.allclose(qk, vv, atol=1e-4)
    reference = blocks[1].attn.mha(x, x, x, need_weights=False)[0]
    assert torch.allclose(qk, reference, atol=1e-5)
    off = tiny("anomalyclip", anomalyclip={"vv_attention": False})
    with torch.no_grad():
        a, b = model.visual(images(1)).patches[-1], off.visual(images(1)).patches[-1]
    assert not torch.allclose(a, b, atol=1e-4)


def test_key_bias_changes_attention() -> None:
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(1, 6, 16)
    bias = torch.zeros(1, 6)
    assert torch.allclose(multihead_attention(mha, x, bias), multihead_attention(mha, x), atol=1e-6)
    bias[0, 3] = 5.0
    assert not torch.allclose(multihead_attention(mha, x, bias), multihead_attention(mha, x))


def test_dynamic_prompts_change_with_the_image() -> None:
    model = tiny("adaclip")
    a, b = images(1, seed=0), images(1, seed=5)
    with torch.no_grad():
        pa = model.prompter.visual_prompts(model._condition(a), 1)
        pb = model.prompter.visual_prompts(model._condition(b), 1)
        ta = model.text([None], model._condition(a))
        tb = model.text([None], model._condition(b))
    assert len(pa) == 2 and pa[0].shape == (1, 5, 64)
    assert not torch.allclose(pa[0], pb[0])
    assert not torch.allclose(ta, tb)


def test_positional_embedding_is_not_mutated() -> None:
    model = tiny("adaclip")
    before = model.visual.visual.positional_embedding.detach().clone()
    with torch.no_grad():
        model(images(1, size=168), [None])  # 12x12 grid against the native 8x8
    assert torch.equal(before, model.visual.visual.positional_embedding)


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


def test_winclip_has_nothing_to_train() -> None:
    assert tiny("winclip").trainable_state() == {}
    assert not tiny_model_config("winclip").trains


def test_gating_removes_the_phrase_from_the_prompt() -> None:
    bank = tiny("anomalyclip").text
    word_ids = set(bank.tokenizer.tokenizer.encode("zebra stripes"))
    with_phrase = bank.tokens("abnormal", "zebra stripes")
    assert word_ids <= set(with_phrase[0].tolist())
    for gated in (None, "", "   "):
        from hxpe.model.explain import gate

        tokens = bank.tokens("abnormal", gate([gated])[0])
        assert not word_ids & set(tokens[0].tolist())
    assert not word_ids & set(bank.tokens("normal", None)[0].tolist())
    disabled = tiny("anomalyclip", explain={"enabled": False}).text
    with torch.no_grad():
        on = bank(["zebra stripes"])[0, 1]
        off = disabled(["zebra stripes"])[0, 1]
        generic = bank([None])[0, 1]
    assert torch.allclose(off, generic, atol=1e-6)
    assert not torch.allclose(on, generic, atol=1e-4)


def test_distinct_phrases_are_encoded_once() -> None:
    model = tiny("anomalyclip")
    seen: list[int] = []
    hook = model.text.encoder.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        with torch.no_grad():
            text = model.text(["crack", "crack", None, "hole", "crack", None])
    finally:
        hook.remove()
    # one call: 1 normal prompt + 3 distinct abnormal prompts (crack, None, hole), 1 sentence each
    assert seen == [4]
    assert torch.allclose(text[0], text[1]) and torch.allclose(text[0], text[4])
    assert not torch.allclose(text[0, 1], text[3, 1])


def test_long_phrase_is_cut_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    bank = tiny("anomalyclip").text
    long_phrase = " ".join(["scratch"] * 120)
    with caplog.at_level(logging.WARNING):
        tokens = bank.tokens("abnormal", long_phrase)
    assert "cut to CLIP" in caplog.text
    assert tokens.shape == (1, 77)
    assert tokens[0, -1] == 0 or tokens[0].argmax() == 76  # EOT kept inside the context


def test_fuse_mode_mixes_the_phrase_embedding_only_for_phrased_images() -> None:
    fuse = tiny("anomalyclip", explain={"mode": "fuse"})
    with torch.no_grad():
        text = fuse.text(["crack", None])
        generic = fuse.text([None, None])
    assert torch.allclose(text[1], generic[1], atol=1e-6)
    assert torch.allclose(text[0, 0], generic[0, 0], atol=1e-6)
    assert not torch.allclose(text[0, 1], generic[0, 1], atol=1e-4)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2, 2), atol=1e-5)


def test_dinov2_prompt_map_peaks_on_a_planted_defect() -> None:
    model = tiny("adaclip")
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 8, 8, generator=g)
    reference = torch.nn.functional.interpolate(base, size=(112, 112), mode="nearest")
    test = reference.clone()
    test[:, :, 42:56, 70:84] = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)  # patch (3, 5)
    with torch.no_grad():
        m = model.vfm(test, (8, 8), reference)
    assert m.shape == (1, 8, 8)
    peak = divmod(int(m.flatten().argmax()), 8)
    assert peak == (3, 5)
    assert float(m.max()) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        same = model.vfm(reference, (8, 8), reference, torch.tensor([True]))
        fallback = model.vfm(test, (8, 8), reference, torch.tensor([False]))
    assert float(same.std()) >= 0 and not torch.allclose(fallback, m)


def test_reweight_and_attn_bias_modes_change_the_map() -> None:
    x, refs = images(2), images(2, seed=9)
    outs = {}
    for name, flags in {
        "off": {"vfm": {"enabled": False}},
        "reweight": {},
        "attn_bias": {"vfm": {"mode": "attn_bias", "bias_beta": 4.0}},
    }.items():
        with torch.no_grad():
            outs[name] = tiny("anomalyclip", **flags)(x, [None, None], references=refs)
    assert outs["off"].vfm_prompt is None
    assert not torch.allclose(outs["off"].anomaly_map, outs["reweight"].anomaly_map)
    assert not torch.allclose(outs["off"].layer_maps[-1], outs["attn_bias"].layer_maps[-1])
    assert torch.allclose(outs["off"].layer_maps[-1], outs["reweight"].layer_maps[-1])


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


@pytest.mark.slow
def test_paper_architecture_builds_with_random_weights_and_runs() -> None:
    from hxpe.model.config import ModelConfig
    from hxpe.model.hxpe import build_paper_architecture_random

    cfg = ModelConfig.model_validate({"clip": {"image_size": 336}})
    model = build_paper_architecture_random(cfg).eval()
    assert len(model.visual.blocks) == 24 and model.visual.width == 1024
    assert model.vfm.dinov2.config.hidden_size == 384
    with torch.no_grad():
        out = model(images(1, size=336), ["scratch"], references=images(1, 336, seed=2))
    assert out.anomaly_map.shape == (1, 336, 336)
    assert [m.shape for m in out.layer_maps] == [(1, 2, 24, 24)] * 4


def test_adaclip_prompts_carry_the_class_name() -> None:
    model = tiny("adaclip")
    bank = model.text
    assert "a bad photo of a metal nut." in bank.sentences("normal", None, "metal nut")
    assert bank.objects(2, ["metal-nut", ""]) == ["metal nut", "object"]
    assert tiny("anomalyclip").text.objects(1, ["bottle"]) == ["object"]  # generic word
    x = images(1)
    with torch.no_grad():
        bottle = model(x, ["scratch"], class_names=["bottle"])
        cable = model(x, ["scratch"], class_names=["cable"])
    assert not torch.allclose(bottle.text_features, cable.text_features)
    sentences = bank.sentences("abnormal", "scratch", "bottle")
    assert "a bad photo of a damaged bottle with scratch." in sentences
