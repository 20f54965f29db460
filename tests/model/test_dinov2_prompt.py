"""The DINOv2 attention prompt (hxpe/model/dinov2_prompt.py): hand-computed prompt maps and the key bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hxpe.model.clip_tower import DualPathAttention, multihead_attention
from hxpe.model.dinov2_prompt import (
    ReferenceCache,
    VfmPrompter,
    calibrate,
    neighbourhood_mask,
    own_nn_distance,
    rarity,
    reference_distance,
    row_keys,
)
from hxpe.model.loading import load_dinov2
from hxpe.model.model import HXPEModel, build_model
from hxpe.model.tiny import tiny_model_config

from support.models import images, tiny


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


def test_vfm_prompter_tolerates_a_dinov2_without_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    dinov2 = tiny("anomalyclip").vfm.dinov2

    def no_sdpa(name: str) -> None:
        raise ImportError(f"{name} needs a newer torch")

    monkeypatch.setattr(dinov2, "set_attn_implementation", no_sdpa)
    prompter = VfmPrompter(dinov2, tiny_model_config("anomalyclip").vfm)
    assert prompter.patch == 14


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


def test_vfm_prompter_switches_dinov2_to_sdpa() -> None:
    """DINOv2 is loaded with eager attention (its last block's attention is computed by the
    prompter itself); the prompter then switches the blocks to SDPA, the faster kernel."""

    dinov2 = load_dinov2(tiny_model_config("anomalyclip").vfm)
    assert dinov2.config._attn_implementation == "eager"
    VfmPrompter(dinov2, tiny_model_config("anomalyclip").vfm)
    assert dinov2.config._attn_implementation == "sdpa"


def test_row_keys_use_every_value_of_short_rows() -> None:
    """Rows shorter than ``samples`` are fingerprinted whole: a difference at any position (here
    the second value) gives a different key."""
    x = torch.zeros(2, 10)
    x[1, 1] = 1.0
    a, b = row_keys(x, samples=16)
    assert a != b and len(a) == 10 * 4
    long = torch.arange(40.0).reshape(1, 40)
    assert row_keys(long, samples=16) == [long[0, ::2].numpy().tobytes()]  # stride 40 // 16 = 2


def test_reference_cache_evicts_the_least_recently_used_reference() -> None:
    cache = ReferenceCache(maxsize=2)
    refs = [torch.full((3, 4, 4), float(i)) for i in range(3)]
    value = (torch.zeros(1), torch.ones(1))
    cache.put(refs[0], (2, 2), value)
    cache.put(refs[1], (2, 2), value)
    assert cache.get(refs[0], (2, 2)) is not None  # 0 is now the most recently used
    cache.put(refs[2], (2, 2), value)  # evicts 1, the least recently used
    assert len(cache) == 2
    assert cache.get(refs[1], (2, 2)) is None
    assert cache.get(refs[0], (2, 2)) is not None and cache.get(refs[2], (2, 2)) is not None


def test_dinov2_normalisation_stays_out_of_the_state_dict() -> None:
    """ImageNet's mean and std are constants of the prompter, not weights a checkpoint carries."""
    prompter = tiny("adaclip").vfm
    assert prompter is not None
    names = set(prompter.state_dict())
    assert not {"mean", "std"} & names, sorted(names)[:5]
    assert torch.equal(prompter.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
