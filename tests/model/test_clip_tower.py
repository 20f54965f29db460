"""CLIP's towers as the method runs them (hxpe/model/clip_tower.py): layers, v-v and dual-path attention, positions, the text encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hxpe.model.clip_tower import DualPathAttention, multihead_attention
from hxpe.model.loading import load_clip
from hxpe.model.tiny import tiny_model_config

from support.models import images, tiny


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


def test_positional_embedding_is_not_mutated() -> None:
    model = tiny("adaclip")
    before = model.visual.visual.positional_embedding.detach().clone()
    with torch.no_grad():
        model(images(1, size=168), [None])  # 12x12 grid against the native 8x8
    assert torch.equal(before, model.visual.visual.positional_embedding)


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
