"""The HXPE model on tiny random-init backbones: shapes, prompts, attention changes, DINOv2 prompts."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from hxpe.model.clip_tower import DualPathAttention, multihead_attention
from hxpe.model.dinov2_prompt import (
    VfmPrompter,
    calibrate,
    neighbourhood_mask,
    own_nn_distance,
    rarity,
    reference_distance,
)
from hxpe.model.loading import MissingWeightsError, load_clip, load_dinov2
from hxpe.model.model import HXPEModel, build_model, gaussian_blur
from hxpe.model.tiny import tiny_model_config

BASES = ["adaclip", "anomalyclip", "winclip"]


_MODELS: dict[str, HXPEModel] = {}


def tiny(base: str, **overrides: object) -> HXPEModel:
    """A tiny model in eval mode, built once per configuration within this module.

    Under mutmut (``MUTANT_UNDER_TEST`` set) every call builds afresh: mutmut runs a mutant only
    against the tests it saw calling the mutated function, and a cached model would credit its
    constructors to the first test that built it alone.
    """
    if os.environ.get("MUTANT_UNDER_TEST"):
        return build_model(tiny_model_config(base, **overrides)).eval()
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
    if base == "winclip":  # hxpe.model.bases.winclip: no per-layer maps, no DINOv2 prompt
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


def test_dual_path_attention_called_as_its_module_is_the_original_q_k_attention() -> None:
    mha = tiny("anomalyclip").visual.blocks[1].attn.mha
    wrapped = DualPathAttention(mha)
    x = torch.randn(2, 6, mha.embed_dim, generator=torch.Generator().manual_seed(0))
    causal = torch.full((6, 6), float("-inf")).triu(1)  # keyword arguments reach the module
    with torch.no_grad():
        out, weights = wrapped(x, x, x, need_weights=False, attn_mask=causal)
        reference = mha(x, x, x, need_weights=False, attn_mask=causal)[0]
        # position 0 attends only to itself: its output is out_proj of its own value
        v0 = F.linear(
            x[:, 0], mha.in_proj_weight[-mha.embed_dim :], mha.in_proj_bias[-mha.embed_dim :]
        )
    assert weights is None
    assert torch.equal(out, reference)
    assert torch.allclose(out[:, 0], mha.out_proj(v0), atol=1e-6)


def test_joint_identity_patch_heads_start_as_the_identity() -> None:
    model = tiny("adaclip", adaclip={"patch_head": "joint_identity"})
    prompter = model.prompter
    e = 32  # the tiny CLIP's joint embedding width
    assert len(prompter.patch_heads) == 4
    for head in [*prompter.patch_heads, prompter.cls_head]:
        assert torch.equal(head.weight, torch.eye(e)) and torch.equal(head.bias, torch.zeros(e))
    with torch.no_grad():
        feats = model.visual(images(1))
        projected = prompter.project_patches(feats)
        cls = prompter.project_cls(feats.cls)
    assert all(torch.equal(p, q) for p, q in zip(projected, feats.patches, strict=True))
    assert torch.equal(cls, feats.cls)


def test_dual_path_key_bias_applies_to_both_paths() -> None:
    """A bias of −1e9 on every key but key 0 leaves one key to attend to: both paths give
    ``out_proj(v_0)`` for every query."""
    mha = tiny("anomalyclip").visual.blocks[1].attn.mha
    x = torch.randn(2, 5, mha.embed_dim, generator=torch.Generator().manual_seed(1))
    bias = torch.full((2, 5), -1e9)
    bias[:, 0] = 0.0
    d = mha.embed_dim
    with torch.no_grad():
        qk, vv = DualPathAttention(mha).dual(x, bias)
        v0 = F.linear(x[:, 0], mha.in_proj_weight[2 * d :], mha.in_proj_bias[2 * d :])
        expected = mha.out_proj(v0)[:, None].expand(2, 5, d)
    assert torch.allclose(qk, expected, atol=1e-5)
    assert torch.allclose(vv, expected, atol=1e-5)


def test_anomalyclip_slots_layout_reserves_the_deep_prompt_slots() -> None:
    """Layout ``slots``: [SOT] [4 deep-prompt slots] [12 context tokens] words [EOT]; layout
    ``overwrite`` (the authors'): no slots, the deep prompts overwrite the context tokens."""
    for layout, slots in (("slots", 4), ("overwrite", 0)):
        bank = tiny("anomalyclip", anomalyclip={"text_layout": layout}).text
        assert bank.prompter.text_slots == slots
        tok = bank.tokenizer.tokenizer
        words = tok.encode(bank.sentences("normal", None)[0])
        expected = [tok.sot_token_id, *[tok.encode("X")[0]] * (slots + 12), *words]
        expected.append(tok.eot_token_id)
        ids = bank.tokens("normal", None)[0].tolist()
        assert ids[: len(expected)] == expected and not any(ids[len(expected) :])


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


def test_patch_heads_refuse_features_of_another_layer_count() -> None:
    from hxpe.model.clip_tower import VisualFeatures

    prompter = tiny("adaclip").prompter
    tokens = [torch.zeros(1, 4, 64)] * 3  # three layers for four heads
    feats = VisualFeatures(torch.zeros(1, 32), tokens, (2, 2), raw_patches=tokens)
    with pytest.raises(ValueError, match="zip"):
        prompter.project_patches(feats)


def test_phrase_that_cannot_fit_at_all_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """Room for 4 word tokens, a 4-token template: nothing of the phrase fits."""
    from hxpe.model.clip_tower import PromptTokenizer

    tok = PromptTokenizer(tiny("anomalyclip").text.tokenizer.tokenizer, n_slots=71)
    assert tok.room() == 4

    def render(p: str) -> list[str]:
        return [f"one two three four {p}".strip()]

    with caplog.at_level(logging.WARNING):
        assert tok.fit_phrase("deep scratch", render) == ""
        assert tok.fit_phrase("dent", render) == ""
    assert "'deep scratch' -> ''" in caplog.text


def test_dynamic_only_prompts_are_the_heads_of_the_cls_feature() -> None:
    model = tiny("adaclip", adaclip={"prompt_types": ["dynamic"]})
    prompter = model.prompter
    assert prompter.visual_static is None and prompter.text_static is None
    cond = torch.randn(3, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        visual = prompter.visual_prompts(cond, 3)
        expected = torch.stack([head(cond) for head in prompter.visual_dynamic], dim=1)
    assert len(visual) == 2 and all(torch.equal(v, expected) for v in visual)
    with pytest.raises(ValueError, match="dynamic prompts need the image's CLS feature"):
        prompter.visual_prompts(None, 3)


def test_prompts_enter_the_stream_in_its_dtype() -> None:
    from hxpe.model.clip_tower import _put_prompts

    x = torch.zeros(2, 1 + 4 + 3, 8)  # CLS, 4 patches, 3 earlier prompt tokens
    prompts = torch.full((2, 5, 8), 1 / 3, dtype=torch.float64)
    out = _put_prompts(x, prompts, n_patch=4, first=False)
    assert out.dtype == torch.float32 and out.shape == (2, 10, 8)
    assert torch.equal(out[:, 5:], prompts.float()) and not out[:, :5].any()
    assert _put_prompts(x, prompts, n_patch=4, first=True).shape == (2, 13, 8)


@pytest.mark.parametrize(
    ("adaclip", "slots", "needs_condition"),
    [
        ({}, 0, True),  # the authors': both branches, layout overwrite
        ({"text_layout": "slots"}, 5, True),
        ({"text_layout": "slots", "branches": ["vision"]}, 0, True),
        ({"branches": ["language"]}, 0, True),
        ({"prompt_types": ["static"]}, 0, False),
    ],
)
def test_adaclip_slots_and_condition_per_layout_and_branch(
    adaclip: dict, slots: int, needs_condition: bool
) -> None:
    """Deep-prompt slots only for the language branch in layout ``slots`` (prompt length 5); the
    frozen CLS pass whenever a branch has dynamic prompts."""
    model = tiny("adaclip", adaclip=adaclip)
    prompter = model.prompter
    assert prompter.text_slots == slots and prompter.needs_condition is needs_condition
    tok = model.text.tokenizer.tokenizer
    sentence = model.text.sentences("normal", None)[0]
    expected = [tok.sot_token_id, *[tok.encode("X")[0]] * slots, *tok.encode(sentence)]
    assert model.text.tokens("normal", None)[0, : len(expected) + 1].tolist() == [
        *expected,
        tok.eot_token_id,
    ]
    with torch.no_grad():
        out = model(images(1), ["dent"])
    assert out.image_score.shape == (1,)


def test_adaclip_slots_layout_deep_text_prompts_from_block_0() -> None:
    prompter = tiny("adaclip", adaclip={"text_layout": "slots"}).prompter
    cond = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        deep = prompter.text_deep(cond, 3)
        dyn = torch.stack([head(cond) for head in prompter.text_dynamic], dim=1)
    assert len(deep) == 2
    for block, prompt in enumerate(deep):
        assert torch.equal(prompt, dyn + prompter.text_static[block].expand(3, -1, -1))


def test_adaclip_without_prompt_types_is_refused() -> None:
    from hxpe.model.bases.adaclip import AdaClipPrompter
    from hxpe.model.bases.base import Dims

    cfg = tiny_model_config("adaclip", adaclip={"prompt_types": []})
    with pytest.raises(
        ValueError, match=r"model\.adaclip\.prompt_types must hold 'static', 'dynamic' or both\."
    ):
        AdaClipPrompter(cfg, Dims(visual_width=64, text_width=64, embed_dim=32, text_blocks=2))


def test_text_encoder_accepts_a_clip_without_text_pool_type_and_checks_causality() -> None:
    """Older open_clip CLIPs have no ``text_pool_type``: they pool at the EOT token (argmax)."""
    from hxpe.model.clip_tower import TextEncoder, _is_causal

    clip, _ = load_clip(tiny_model_config("anomalyclip").clip)
    del clip.text_pool_type
    assert TextEncoder(clip).causal
    causal = torch.full((3, 3), float("-inf")).triu(1)
    leaky = causal.clone()
    leaky[2, 0] = 1.0  # −inf only above the diagonal, but not 0 below it
    assert _is_causal(causal)
    assert not _is_causal(leaky) and not _is_causal(torch.zeros(3, 3)) and not _is_causal(None)


def test_vision_encoder_checks_the_pooling_and_keeps_its_buffers_out_of_the_state_dict() -> None:
    from hxpe.model.clip_tower import VisualEncoder

    clip, _ = load_clip(tiny_model_config("anomalyclip").clip)
    visual = clip.visual
    del visual.pool_type  # older open_clip: a class-token tower
    encoder = VisualEncoder(visual, [1, 2])
    assert set(encoder.state_dict()) == {f"visual.{k}" for k in visual.state_dict()}
    assert torch.equal(encoder.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    visual.attn_pool = torch.nn.Identity()
    with pytest.raises(ValueError, match="Only class-token CLIP vision towers are supported"):
        VisualEncoder(visual, [1, 2])


def test_interpolate_positions_on_a_non_square_grid() -> None:
    """The patch part resized like an image (align_corners=False); the CLS row kept."""
    from hxpe.model.clip_tower import interpolate_positions

    pos = torch.arange(5 * 2, dtype=torch.float32).view(5, 2)  # CLS + a 2x2 grid, 2 channels
    out = interpolate_positions(pos, (2, 4), mode="bilinear")
    assert out.shape == (1 + 8, 2) and torch.equal(out[0], pos[0])
    # channel 0 of the grid is [[2, 4], [6, 8]]; along a row the 4 columns sample at
    # x = -0.25, 0.25, 0.75, 1.25 (clamped to [0, 1]): 2, 2.5, 3.5, 4 and 6, 6.5, 7.5, 8
    expected = torch.tensor([2.0, 2.5, 3.5, 4.0, 6.0, 6.5, 7.5, 8.0])
    assert torch.allclose(out[1:, 0], expected) and torch.allclose(out[1:, 1], expected + 1)
    assert interpolate_positions(pos, (2, 2)) is pos


def test_vfm_prompter_tolerates_a_dinov2_without_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    dinov2 = tiny("anomalyclip").vfm.dinov2

    def no_sdpa(name: str) -> None:
        raise ImportError(f"{name} needs a newer torch")

    monkeypatch.setattr(dinov2, "set_attn_implementation", no_sdpa)
    prompter = VfmPrompter(dinov2, tiny_model_config("anomalyclip").vfm)
    assert prompter.patch == 14


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


def test_vision_encoder_on_a_non_native_grid_interpolates_the_positions() -> None:
    """112 x 140 px at patch 14: an 8 x 10 grid; the positions resized as the base says."""
    from hxpe.model.clip_tower import interpolate_positions

    encoder = tiny("anomalyclip").visual
    v = encoder.visual
    x = torch.rand(1, 3, 112, 140, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        feats = encoder(x)
        patches = v.conv1(encoder.normalize(x)).flatten(2).transpose(1, 2)
        pos = interpolate_positions(v.positional_embedding, (8, 10), "bilinear")
        tokens = torch.cat([v.class_embedding.expand(1, 1, -1), patches], dim=1) + pos
        embedded = encoder.embed(x)
    assert encoder.pos_interpolation == "bilinear"  # AnomalyCLIP's
    assert feats.grid == (8, 10) and feats.patches[0].shape == (1, 80, 32)
    assert torch.allclose(embedded, v.ln_pre(tokens), atol=1e-5)


def test_vv_stream_adds_only_the_vv_attention_from_its_first_block() -> None:
    """AnomalyCLIP's DPAM stream, written out: it starts from the q-k stream at the first dual
    block and then adds each block's v-v attention (no MLP). The tiny CLIP has no layer scale."""
    encoder = tiny("anomalyclip").visual
    x = images(1)
    with torch.no_grad():
        feats = encoder(x)
        qk = encoder.embed(x)
        vv = None
        for block in encoder.blocks:
            h = block.ln_1(qk)
            if isinstance(block.attn, DualPathAttention):
                attn, attn_vv = block.attn.dual(h)
                vv = (qk if vv is None else vv) + attn_vv
            else:
                attn = multihead_attention(block.attn, h)
            qk = qk + attn
            qk = qk + block.mlp(block.ln_2(qk))
    assert torch.allclose(feats.raw_patches[-1], vv[:, 1:], atol=1e-5)
    assert torch.allclose(feats.cls_token, qk[:, 0], atol=1e-5)


def test_dynamic_prompts_change_with_the_image() -> None:
    model = tiny("adaclip")
    a, b = images(1, seed=0), images(1, seed=5)
    with torch.no_grad():
        pa = model.prompter.visual_prompts(model.prompter.condition(model.visual, a), 1)
        pb = model.prompter.visual_prompts(model.prompter.condition(model.visual, b), 1)
        ta = model.text([None], model.prompter.condition(model.visual, a))
        tb = model.text([None], model.prompter.condition(model.visual, b))
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
        from hxpe.model.explainable import gate

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
    from hxpe.model.model import build_paper_architecture_random

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
    for row in (0, 1):  # normal and abnormal prompts both carry the class word
        assert not torch.allclose(bottle.text_features[:, row], cable.text_features[:, row])
    sentences = bank.sentences("abnormal", "scratch", "bottle")
    assert "a bad photo of a damaged bottle with scratch." in sentences


# --------------------------------------------------------------------------------------------------
# DINOv2 prompt formula (hand-computed cases)
# --------------------------------------------------------------------------------------------------


def unit(*xs: float) -> torch.Tensor:
    v = torch.tensor(xs, dtype=torch.float32)
    return v / v.norm()


E0, E1, E2 = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)


def test_calibrate_is_zero_up_to_the_normal_scale_then_excess_over_one_plus_excess() -> None:
    d = torch.tensor([[0.0, 0.1, 0.2, 0.4, 0.6, 1.0]])
    expected = torch.tensor([[0.0, 0.0, 0.0, 1 / 2, 2 / 3, 4 / 5]])
    assert torch.allclose(calibrate(d, torch.tensor([0.2])), expected, atol=1e-6)
    per_row = calibrate(torch.tensor([[0.4], [0.4]]), torch.tensor([0.2, 0.1]))
    assert torch.allclose(per_row, torch.tensor([[1 / 2], [3 / 4]]), atol=1e-6)


def test_reference_distance_nn_and_mutual_gap() -> None:
    feats = torch.stack([E0, unit(0.8, 0.6, 0)])[None]  # patch 1 is closest to ref 0 (0.8)
    ref = torch.stack([E0, E1])[None]  # ref 0 is claimed by patch 0 at similarity 1
    nn_d = reference_distance(feats, ref, mutual=False)
    mutual = reference_distance(feats, ref, mutual=True)
    assert torch.allclose(nn_d, torch.tensor([[0.0, 0.2]]), atol=1e-6)
    assert torch.allclose(mutual, torch.tensor([[0.0, 0.4]]), atol=1e-6)  # 0.2 + (1 − 0.8)
    # matches cross over (patch 0 -> ref 1, patch 1 -> ref 0); each match is mutual: no gap
    crossed = torch.stack([unit(0.6, 0.8, 0), E0])[None]
    expected = torch.tensor([[0.2, 0.0]])
    assert torch.allclose(reference_distance(crossed, ref, mutual=True), expected, atol=1e-6)


def test_rarity_is_the_mean_distance_to_the_k_most_similar_other_patches() -> None:
    feats = torch.stack([E0, E0, E1])[None]
    assert torch.allclose(rarity(feats, 1), torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-6)
    assert torch.allclose(rarity(feats, 2), torch.tensor([[0.5, 0.5, 1.0]]), atol=1e-6)


def test_own_nn_distance_skips_the_patch_and_its_3x3_neighbours() -> None:
    near = neighbourhood_mask((1, 4))
    assert near.tolist() == [
        [True, True, False, False],
        [True, True, True, False],
        [False, True, True, True],
        [False, False, True, True],
    ]
    square = neighbourhood_mask((3, 3))
    assert square[0].tolist() == [True, True, False, True, True, False, False, False, False]
    assert square[4].all()  # the centre touches every patch of a 3×3 grid
    # patch 1 repeats patch 0 but is its neighbour, so it does not count as patch 0's match
    feats = torch.stack([E0, E0, E1, unit(1, 1, 0)])[None]
    d = own_nn_distance(feats, (1, 4))
    s = 1 - 2**-0.5
    assert torch.allclose(d, torch.tensor([[s, s, 1.0, s]]), atol=1e-6)
    with pytest.raises(ValueError, match=r"grid \(2, 2\) is too small to calibrate on"):
        own_nn_distance(torch.stack([E0, E1, E2, E0])[None], (2, 2))


class _HandFeatures(VfmPrompter):
    """A prompter whose DINOv2 features are given by hand: image pixel [0, 0, 0] picks a row."""

    def __init__(self, base: VfmPrompter, cfg, table: dict[int, tuple]) -> None:
        super().__init__(base.dinov2, cfg)
        self.table = table

    def features(self, images, grid):
        rows = [self.table[int(round(float(img[0, 0, 0])))] for img in images]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def _hand_prompter(**vfm: object) -> _HandFeatures:
    base = tiny("adaclip").vfm
    cfg = base.cfg.model_copy(update={"distance": "nn", "salience_weight": 0.5} | vfm)
    v = unit(0.6, 0, 0.8)
    test = torch.stack([E0, E2, v, E1]), torch.tensor([0.1, 0.3, 0.5, 0.2])
    ref = torch.stack([E0, E1, unit(0.8, 0.6, 0), E1]), torch.zeros(4)
    return _HandFeatures(base, cfg, {0: test, 1: ref})


def test_prompt_map_formula_with_a_reference() -> None:
    """Reference own NN distances [0.2, 0, 0.2, 0] -> median scale 0.1; test NN distances
    [0, 1, 0.4, 0] -> calibrated [0, 0.9, 0.75, 0]; salience min-max [0, 0.5, 1, 0.25] -> weights
    (1 − γ) + γ·ŝ = [0.5, 0.75, 1, 0.625]; M = [0, 0.675, 0.75, 0]."""
    prompter = _hand_prompter(calibration_quantile=0.5)
    images, refs = torch.zeros(1, 3, 14, 56), torch.ones(1, 3, 14, 56)
    m = prompter(images, (1, 4), refs).prompt
    assert torch.allclose(m, torch.tensor([[[0.0, 0.675, 0.75, 0.0]]]), atol=1e-5)
    higher = _hand_prompter(calibration_quantile=0.9)(images, (1, 4), refs).prompt  # scale 0.2
    expected = torch.tensor([4 / 5, 1 / 2]) * torch.tensor([0.75, 1.0])
    assert torch.allclose(higher[0, 0, 1:3], expected, atol=1e-5)


def test_prompt_map_formula_without_a_reference_uses_rarity_over_its_median() -> None:
    """Rarity (k = 1) [0.4, 0.2, 0.2, 1.0], median 0.2 -> calibrated [0.5, 0, 0, 0.8]; times the
    salience weights [0.5, 0.75, 1, 0.625] -> M = [0.25, 0, 0, 0.5]."""
    prompter = _hand_prompter(rarity_k=1)
    images, refs = torch.zeros(1, 3, 14, 56), torch.ones(1, 3, 14, 56)
    expected = torch.tensor([[[0.25, 0.0, 0.0, 0.5]]])
    assert torch.allclose(prompter(images, (1, 4)).prompt, expected, atol=1e-5)
    no_ref = prompter(images, (1, 4), refs, torch.tensor([False])).prompt
    assert torch.allclose(no_ref, expected, atol=1e-5)


PALETTE = torch.tensor([[0.55, 0.35, 0.25], [0.6, 0.4, 0.3], [0.5, 0.32, 0.22]])
NORMAL_MAX = 0.35  # a normal image's calibrated map stays below this (per-image min-max gave 1)


def palette_texture(seed: int) -> torch.Tensor:
    """A 112 px image of 8×8 patch-aligned tiles, each a random colour of a 3-colour palette."""
    g = torch.Generator().manual_seed(seed)
    tiles = PALETTE[torch.randint(0, 3, (8, 8), generator=g)].permute(2, 0, 1)[None]
    return F.interpolate(tiles, size=(112, 112), mode="nearest")


@pytest.mark.parametrize("with_reference", [True, False])
def test_calibrated_prompt_map_peaks_on_a_planted_defect_and_stays_low_on_a_normal_image(
    with_reference: bool,
) -> None:
    model = tiny("adaclip")
    reference, normal = palette_texture(0), palette_texture(1)
    defect = normal.clone()
    defect[:, :, 42:56, 70:84] = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)  # patch (3, 5)
    has = torch.tensor([with_reference])
    with torch.no_grad():
        m_normal = model.vfm(normal, (8, 8), reference, has).prompt
        m_defect = model.vfm(defect, (8, 8), reference, has).prompt
    assert divmod(int(m_defect.flatten().argmax()), 8) == (3, 5)
    assert float(m_defect.max()) > 0.9
    assert float(m_normal.max()) < NORMAL_MAX
    others = m_defect.flatten().clone()
    others[3 * 8 + 5] = 0
    assert float(others.max()) < NORMAL_MAX


# --------------------------------------------------------------------------------------------------
# Key bias: sign, placement; deep visual prompts; modes
# --------------------------------------------------------------------------------------------------


def test_key_bias_adds_to_the_logits_of_its_key() -> None:
    """With zero queries every logit is 0, so the attention weights are softmax(bias): a bias of
    log 3 on key 0 of 3 keys gives weights (3, 1, 1)/5 — a positive prompt draws attention."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(4, 1, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight[:4].zero_()  # queries
        mha.in_proj_bias.zero_()
    x = torch.randn(1, 3, 4)
    values = F.linear(x, mha.in_proj_weight[8:])
    bias = torch.tensor([[float(np.log(3.0)), 0.0, 0.0]])
    expected = mha.out_proj((3 * values[:, 0] + values[:, 1] + values[:, 2]) / 5)
    out = multihead_attention(mha, x, bias)
    assert torch.allclose(out, expected[:, None].expand(1, 3, 4), atol=1e-5)
    uniform = mha.out_proj(values.mean(dim=1))
    assert torch.allclose(multihead_attention(mha, x), uniform[:, None].expand(1, 3, 4), atol=1e-5)


def _block_biases(model: HXPEModel, monkeypatch: pytest.MonkeyPatch, *args, **kwargs) -> list:
    """Run ``model`` and return, per vision block, the key bias its attention received."""
    import hxpe.model.clip_tower as vision

    seen: list[torch.Tensor | None] = []
    real = vision.multihead_attention

    def spy(mha, x, key_bias=None, value_value=False):
        seen.append(None if key_bias is None else key_bias.clone())
        return real(mha, x, key_bias, value_value)

    monkeypatch.setattr(vision, "multihead_attention", spy)
    with torch.no_grad():
        out = model(*args, **kwargs)
    return seen, out


def test_key_bias_is_beta_times_the_prompt_map_in_the_last_blocks_only(monkeypatch) -> None:
    model = tiny("adaclip", vfm={"bias_beta": 2.5})  # 4 blocks, bias_last_n 2, 2 prompted blocks
    assert model.bias_blocks == frozenset({2, 3})
    seen, out = _block_biases(model, monkeypatch, images(1), [None], references=images(1, seed=4))
    assert len(seen) == 8  # the frozen CLS pass of the dynamic prompts (unbiased), then the model
    assert all(b is None for b in seen[:4])
    seen = seen[4:]
    assert seen[0] is None and seen[1] is None
    n_prompt = model.cfg.adaclip.prompt_length
    expected = F.pad(2.5 * out.vfm_prompt.flatten(1), (1, n_prompt))  # CLS and prompts unbiased
    for bias in seen[2:]:
        assert torch.allclose(bias, expected)
    assert float(out.vfm_prompt.max()) > 0


def test_attn_bias_reaches_the_layer_maps_and_reweight_only_the_final_map() -> None:
    x, refs = images(2), images(2, seed=9)
    outs = {}
    for name, flags in {
        "off": {"vfm": {"enabled": False}},
        "reweight": {"vfm": {"mode": "reweight", "alpha": 0.5}},
        "attn_bias": {"vfm": {"mode": "attn_bias", "bias_beta": 4.0}},
    }.items():
        with torch.no_grad():
            outs[name] = tiny("anomalyclip", **flags)(x, [None, None], references=refs)
    assert outs["off"].vfm_prompt is None
    assert not torch.allclose(outs["off"].layer_maps[-1], outs["attn_bias"].layer_maps[-1])
    for a, b in zip(outs["off"].layer_maps, outs["reweight"].layer_maps, strict=True):
        assert torch.equal(a, b)  # training sees nothing of the re-weighting
    assert tiny("anomalyclip").cfg.vfm.mode == "attn_bias"  # the default


def test_reweight_formula() -> None:
    """Re-weighting scales the fused map (AnomalyCLIP: summed over layers) by (1 + α·up(M))/(1 + α)."""
    from hxpe.model.model import upsample

    model = tiny("anomalyclip", vfm={"mode": "reweight", "alpha": 0.5}, sigma=0.0)
    with torch.no_grad():
        out = model(images(1), [None], references=images(1, seed=2))
    size = tuple(out.anomaly_map.shape[-2:])
    fused = upsample(sum((p[:, 1] + 1 - p[:, 0]) / 2 for p in out.layer_maps), size)  # linear
    expected = fused * (1 + 0.5 * upsample(out.vfm_prompt, size)) / 1.5
    assert torch.allclose(out.anomaly_map, expected, atol=1e-5)


def test_learned_beta_is_a_trainable_scalar_that_gets_gradients() -> None:
    model = build_model(tiny_model_config("adaclip", vfm={"learn_beta": True})).train()
    assert "key_bias.beta" in model.trainable_state()
    out = model(images(2), [None, None], references=images(2, seed=3))
    out.layer_maps[-1][:, 1].mean().backward()
    assert model.key_bias.beta.grad is not None and float(model.key_bias.beta.grad.abs()) > 0
    fixed = tiny("adaclip")
    assert "key_bias.beta" not in fixed.trainable_state()
    assert "key_bias.beta" not in fixed.state_dict()  # a fixed β is config, not state
    assert float(fixed.key_bias.beta) == fixed.cfg.vfm.bias_beta


def test_visual_prompts_are_appended_at_block_0_and_replaced_in_later_prompted_blocks() -> None:
    enc = tiny("adaclip").visual  # the encoder driven directly, with prompts given by hand
    width, n_patch = enc.width, 64
    g = torch.Generator().manual_seed(1)
    # float16-exact values: AdaCLIP casts injected prompts to float16 (its .half())
    prompts = [torch.randn(1, 3, width, generator=g).half().float() for _ in range(2)]
    inputs: list[torch.Tensor] = []
    hooks = [b.ln_1.register_forward_hook(lambda m, a, o: inputs.append(a[0])) for b in enc.blocks]
    try:
        with torch.no_grad():
            enc(images(1), prompts)
    finally:
        for h in hooks:
            h.remove()
    assert [t.shape[1] for t in inputs] == [1 + n_patch + 3] * 4
    assert torch.equal(inputs[0][:, 1 + n_patch :], prompts[0])
    assert torch.equal(inputs[1][:, 1 + n_patch :], prompts[1])
    assert not torch.allclose(inputs[2][:, 1 + n_patch :], prompts[1])  # carried, not replaced
    with torch.no_grad():
        plain = enc(images(1)).patches[0]
        prompted = enc(images(1), prompts).patches[0]
    assert plain.shape == prompted.shape == (1, n_patch, enc.visual.proj.shape[1])


# --------------------------------------------------------------------------------------------------
# Fuse mode
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_fuse_mode_formula_only_for_phrased_images(lam: float) -> None:
    fuse = tiny("anomalyclip", explain={"mode": "fuse", "fuse_lambda": lam})
    with torch.no_grad():
        text = fuse.text(["crack", None])
        generic = fuse.text([None, None])
        g_e = fuse.text._phrase_alone(["crack"])[0]
    expected = F.normalize(generic[0, 1] + lam * g_e, dim=-1)
    assert torch.allclose(text[0, 1], expected, atol=1e-5)
    assert torch.allclose(text[1], generic[1], atol=1e-6)
    assert torch.allclose(text[:, 0], generic[:, 0], atol=1e-6)
    assert float(F.cosine_similarity(text[0, 1], g_e, dim=0)) > float(
        F.cosine_similarity(generic[0, 1], g_e, dim=0)
    )


def test_fuse_mode_encodes_each_phrase_alone_through_its_template() -> None:
    fuse = tiny("anomalyclip", explain={"mode": "fuse", "fuse_template": "a photo of {phrase}"})
    enc = fuse.text.encoder
    with torch.no_grad():
        text = fuse.text(["crack", "hole", None, "crack"])
        generic = fuse.text([None])[0, 1]
        tokens = fuse.text.plain_tokenizer(["a photo of crack", "a photo of hole"])
        g_crack, g_hole = enc(tokens)  # the plain text tower, no prompt tokens
    assert torch.allclose(text[0, 1], F.normalize(generic + g_crack, dim=-1), atol=1e-5)
    assert torch.allclose(text[1, 1], F.normalize(generic + g_hole, dim=-1), atol=1e-5)
    assert torch.allclose(text[2, 1], generic, atol=1e-6)
    assert torch.equal(text[3], text[0])


@pytest.mark.parametrize("layout", ["overwrite", "slots"])
def test_anomalyclip_deep_text_prompts_per_block(layout: str) -> None:
    """Layout ``overwrite`` (the authors'): block 0 keeps its context tokens, the depth − 1 deep
    prompts enter blocks 1..depth−1; layout ``slots``: a deep prompt at every block from 0."""
    prompter = tiny("anomalyclip", anomalyclip={"text_layout": layout}).prompter
    deep = prompter.text_deep(None, 3)
    assert len(deep) == 2  # the tiny text_prompt_depth
    learned = [d.expand(3, -1, -1) for d in prompter.deep]
    expected = [None, *learned] if layout == "overwrite" else learned
    assert len(learned) == (1 if layout == "overwrite" else 2)
    for got, want in zip(deep, expected, strict=True):
        assert (got is None and want is None) or torch.equal(got, want)


def test_torch_kmeans_gets_the_configured_iterations() -> None:
    from hxpe.model.bases.adaclip import SklearnKMeans, TorchKMeans

    model = tiny("adaclip", adaclip={"hsf_kmeans": "torch", "kmeans_iters": 3})
    assert type(model.prompter.clusterer) is TorchKMeans and model.prompter.clusterer.iters == 3
    assert type(tiny("adaclip").prompter.clusterer) is SklearnKMeans
    with torch.no_grad():
        assert model(images(1), [None]).image_score.shape == (1,)


def test_image_features_are_the_unit_cls_feature_of_the_score() -> None:
    """AnomalyCLIP scores the CLS feature against the text: image_logits = f · t / τ."""
    model = tiny("anomalyclip")
    with torch.no_grad():
        out = model(images(2), ["scratch", None])
    f, t = out.image_features, out.text_features
    assert f.shape == (2, 32) and torch.allclose(f.norm(dim=-1), torch.ones(2), atol=1e-5)
    expected = torch.einsum("bd,bkd->bk", f, t) / model.cfg.arithmetic.temperature
    assert torch.allclose(out.image_logits, expected, atol=1e-5)


def test_prompt_tokenizer_and_text_encoder_say_what_they_need() -> None:
    from hxpe.model.clip_tower import PromptTokenizer, TextEncoder

    with pytest.raises(
        TypeError,
        match=r"needs open_clip's SimpleTokenizer \(CLIP BPE\); object has no 'encode'\.",
    ):
        PromptTokenizer(object(), n_slots=0)
    clip, _ = load_clip(tiny_model_config("anomalyclip").clip)
    clip.text_pool_type = "last"
    with pytest.raises(
        ValueError, match=r"^Only CLIP text towers pooled at the EOT token \(argmax\) are supported"
    ):
        TextEncoder(clip)


def test_text_encoder_without_an_attention_mask_matches_open_clip() -> None:
    """A text tower without a causal mask runs the full context (no trimming) like open_clip."""
    from hxpe.model.clip_tower import TextEncoder

    clip, tokenizer = load_clip(tiny_model_config("anomalyclip").clip)
    clip.attn_mask = None
    encoder = TextEncoder(clip)
    assert encoder.attn_mask is None and not encoder.causal
    tokens = tokenizer(["a photo of a flawless object", "a scratch"])
    with torch.no_grad():
        ours = encoder(tokens)
        theirs = clip.encode_text(tokens, normalize=True)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_row_keys_use_every_value_of_short_rows() -> None:
    """Rows shorter than ``samples`` are fingerprinted whole: a difference at any position (here
    the second value) gives a different key."""
    from hxpe.model.dinov2_prompt import row_keys

    x = torch.zeros(2, 10)
    x[1, 1] = 1.0
    a, b = row_keys(x, samples=16)
    assert a != b and len(a) == 10 * 4
    long = torch.arange(40.0).reshape(1, 40)
    assert row_keys(long, samples=16) == [long[0, ::2].numpy().tobytes()]  # stride 40 // 16 = 2


def test_prompt_dtype_rounds_the_prompts_before_they_enter_the_stream() -> None:
    """``prompt_dtype`` (the authors' ``.half()`` on AdaCLIP's prompts): each block's prompts are
    rounded through it first, exactly as if they had been given rounded; None leaves them as given."""
    from hxpe.model.clip_tower import TextEncoder, VisualEncoder

    clip, tokenizer = load_clip(tiny_model_config("adaclip").clip)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randn(2, 3, 64, generator=g) / 3 for _ in range(2)]
    rounded = [p.half().float() for p in prompts]
    x = images(2)
    with torch.no_grad():
        half = VisualEncoder(clip.visual, [2, 4], prompt_dtype=torch.float16)(x, prompts)
        given = VisualEncoder(clip.visual, [2, 4])(x, rounded)
        plain = VisualEncoder(clip.visual, [2, 4])(x, prompts)
        assert torch.equal(half.cls, given.cls) and torch.equal(half.patches[1], given.patches[1])
        assert not torch.equal(plain.cls, given.cls)
        tokens = tokenizer(["a photo of a damaged object"])
        deep = [None, torch.randn(1, 2, 64, generator=g) / 3]
        text_half = TextEncoder(clip, prompt_dtype=torch.float16)(tokens, None, deep)
        text_given = TextEncoder(clip)(tokens, None, [None, deep[1].half().float()])
        text_plain = TextEncoder(clip)(tokens, None, deep)
    assert torch.equal(text_half, text_given) and not torch.equal(text_plain, text_given)


def test_a_phrase_too_long_is_cut_at_token_boundaries_until_it_fits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Room for 4 word tokens, a 2-token template: the phrase keeps its first 2 tokens."""
    from hxpe.model.clip_tower import PromptTokenizer

    tok = PromptTokenizer(tiny("anomalyclip").text.tokenizer.tokenizer, n_slots=71)

    def render(p: str) -> list[str]:
        return [f"one two {p}".strip(), p]

    with caplog.at_level(logging.WARNING, logger="hxpe.model.clip_tower"):
        assert tok.fit_phrase("deep scratch near the edge", render) == "deep scratch"
        assert tok.fit_phrase("short dent", render) == "short dent"
    assert [r.message for r in caplog.records if r.name == "hxpe.model.clip_tower"] == [
        "Explainable phrase cut to CLIP's 77-token context: 'deep scratch near the edge' -> "
        "'deep scratch'"
    ]


def test_vfm_prompter_switches_dinov2_to_sdpa() -> None:
    """DINOv2 is loaded with eager attention (its last block's attention is computed by the
    prompter itself); the prompter then switches the blocks to SDPA, the faster kernel."""
    from hxpe.model.loading import load_dinov2

    dinov2 = load_dinov2(tiny_model_config("anomalyclip").vfm)
    assert dinov2.config._attn_implementation == "eager"
    VfmPrompter(dinov2, tiny_model_config("anomalyclip").vfm)
    assert dinov2.config._attn_implementation == "sdpa"


def test_a_template_too_long_is_refused_with_its_first_60_characters() -> None:
    from hxpe.model.clip_tower import PromptTokenizer

    tok = PromptTokenizer(tiny("anomalyclip").text.tokenizer.tokenizer, n_slots=71)  # room 4
    sentence = "a b c d e " + "x" * 70
    with pytest.raises(ValueError) as err:
        tok([sentence])
    n = len(tok.tokenizer.encode(sentence))
    assert str(err.value) == (
        f"Prompt {sentence[:60]!r}... has {n} tokens; at most 4 fit in CLIP's 77-token context. "
        "Shorten the template."
    )


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
