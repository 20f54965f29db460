"""The bases' prompts (hxpe/model/bases/): AdaCLIP's and AnomalyCLIP's slots, static and dynamic prompts, patch heads, HSF's k-means."""

from __future__ import annotations

import pytest
import torch

from hxpe.model.loading import load_clip
from hxpe.model.tiny import tiny_model_config

from support.models import images, tiny


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


def test_patch_heads_refuse_features_of_another_layer_count() -> None:
    from hxpe.model.clip_tower import VisualFeatures

    prompter = tiny("adaclip").prompter
    tokens = [torch.zeros(1, 4, 64)] * 3  # three layers for four heads
    feats = VisualFeatures(torch.zeros(1, 32), tokens, (2, 2), raw_patches=tokens)
    with pytest.raises(ValueError, match="zip"):
        prompter.project_patches(feats)


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


def test_winclip_has_nothing_to_train() -> None:
    assert tiny("winclip").trainable_state() == {}
    assert not tiny_model_config("winclip").trains


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
