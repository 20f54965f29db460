"""WinCLIP (hxpe.model.bases.winclip): window geometry, harmonic aggregation, and the whole zero-shot forward
pinned against anomalib's ``WinClipModel`` on identical random weights.

How ``tests/golden/winclip_anomalib_tiny.safetensors`` was produced (once, outside the project venv; no
anomalib code is in this repository): anomalib 2.7.0 was installed in a throwaway venv beside this
project's pinned torch 2.x / open_clip 3.3.0. Its ``WinClipModel(class_name="object")`` was built with
its module constants ``BACKBONE = "hxpe-tiny-winclip"`` (``hxpe/model/configs/hxpe-tiny-winclip.json``
registered with ``open_clip.add_model_config``) and ``PRETRAINED = None`` under
``torch.manual_seed(7)``; the generator asserted that its CLIP's state dict equals
``hxpe.model.loading.load_clip(..., seed=7)``'s. anomalib's ``create_prompt_ensemble`` was replaced by
``prompts.yaml``'s ``winclip`` ensemble (anomalib's own list drops "broken {}" and two templates).
anomalib permutes the window tokens to (L, N, D) before ``visual.transformer``, which open_clip 3.x
runs batch-first, so the generator set ``transformer.batch_first = False`` inside
``_get_window_embeddings`` only (without it, attention mixes windows: maps differ by 0.027). The
inputs are two seeded 64x64 images in [0, 1] (CLIP-normalised for anomalib); stored are the images,
anomalib's ``pred_score`` and ``anomaly_map``, its text embeddings and its 2x2 / 3x3 window embeddings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hxpe.model.bases.base import ModelOutput
from hxpe.model.bases.winclip import WinClipModel, harmonic_to_patches, window_indices
from hxpe.model.clip_tower import ClipConfig
from hxpe.model.config import ModelConfig
from hxpe.model.model import build_model

FIXTURE = Path(__file__).resolve().parents[1] / "golden" / "winclip_anomalib_tiny.safetensors"
TOL = 1e-5  # float32 on CPU; measured max difference 9e-8


def tiny_cfg(**winclip: object) -> ModelConfig:
    return ModelConfig(
        base="winclip",
        random_init_seed=7,
        clip=ClipConfig(
            model_name="hxpe-tiny-winclip",
            pretrained=None,
            config_file="hxpe/model/configs/hxpe-tiny-winclip.json",
            image_size=64,
            layers=[2],
        ),
        explain={"enabled": False},
        vfm={"enabled": False},
        winclip=winclip,
    )


@pytest.fixture(scope="module")
def model() -> WinClipModel:
    m = build_model(tiny_cfg())
    assert isinstance(m, WinClipModel)
    return m


def test_window_indices_stride_one() -> None:
    w = window_indices((4, 5), 3)
    assert w.shape == (2 * 3, 9)
    assert w[0].tolist() == [0, 1, 2, 5, 6, 7, 10, 11, 12]
    assert w[-1].tolist() == [7, 8, 9, 12, 13, 14, 17, 18, 19]
    with pytest.raises(ValueError, match="does not fit the 2x2 patch grid"):
        window_indices((2, 2), 3)


def test_windows_with_a_stride() -> None:
    """Stride 2 over a 4x4 grid: the four disjoint 2x2 windows, row-major."""
    assert window_indices((4, 4), 2, stride=2).tolist() == [
        [0, 1, 4, 5],
        [2, 3, 6, 7],
        [8, 9, 12, 13],
        [10, 11, 14, 15],
    ]
    assert window_indices((3, 5), 2, stride=2).tolist() == [[0, 1, 5, 6], [2, 3, 7, 8]]


def test_harmonic_aggregation_by_hand() -> None:
    # 3x3 grid, 2x2 windows with scores 1, 0.75, 0.5, 0.25: patch 4 is in all four windows,
    # harmonic mean 4 / (1 + 4/3 + 2 + 4) = 0.48; patch 1 in the first two: 2 / (1 + 4/3) = 0.857.
    scores = torch.tensor([[1.0, 0.75, 0.5, 0.25]])
    out = harmonic_to_patches(scores, window_indices((3, 3), 2), 9).view(3, 3)
    expected = torch.tensor([[1.0, 6 / 7, 0.75], [2 / 3, 0.48, 0.375], [0.5, 1 / 3, 0.25]])
    torch.testing.assert_close(out, expected)


def test_matches_anomalib_winclip(model: WinClipModel) -> None:
    ref = load_file(FIXTURE)
    with torch.no_grad():
        out = model(ref["images"], [None, None])
        tokens = model.tokens(ref["images"])
        windows = [model.window_embeddings(tokens, w) for w in model.windows]
    assert isinstance(out, ModelOutput)
    assert out.layer_maps == [] and out.vfm_prompt is None and out.image_logits.shape == (2, 2)
    torch.testing.assert_close(
        model.text, torch.nn.functional.normalize(ref["text_embeddings"], dim=-1), atol=TOL, rtol=0
    )
    torch.testing.assert_close(windows[0], ref["window_embeddings_2"], atol=TOL, rtol=0)
    torch.testing.assert_close(windows[1], ref["window_embeddings_3"], atol=TOL, rtol=0)
    torch.testing.assert_close(out.image_score, ref["image_score"], atol=TOL, rtol=0)
    torch.testing.assert_close(out.anomaly_map, ref["anomaly_map"], atol=TOL, rtol=0)
    # the map is not flat: the re-encoded windows see the planted texture
    assert float(out.anomaly_map[1].max() - out.anomaly_map[1].min()) > 1e-3


def test_scales_are_configurable(model: WinClipModel) -> None:
    one = build_model(tiny_cfg(scales=[2]))
    assert [w.shape[0] for w in one.windows] == [9]
    assert [w.shape[0] for w in model.windows] == [9, 4]
    images = torch.rand(1, 3, 80, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = one(images, [None])
    assert out.anomaly_map.shape == (1, 80, 80)  # back at the input resolution
    assert one.trainable_state() == {}


@pytest.mark.parametrize("enabled", [True, False])
def test_explain_or_dinov2_settings_are_ignored_with_a_warning(
    enabled: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_cfg().model_copy(
        update={"vfm": tiny_cfg().vfm.model_copy(update={"enabled": enabled})}
    )
    with caplog.at_level("WARNING", logger="hxpe.model.bases.winclip"):
        build_model(cfg)
    warned = [r.message for r in caplog.records if r.name == "hxpe.model.bases.winclip"]
    assert warned == (
        [
            "WinCLIP uses neither explainable prompts nor DINOv2 prompts; model.explain and "
            "model.vfm are ignored (disable them in the variant to silence this)."
        ]
        if enabled
        else []
    )


@pytest.mark.parametrize(("scales", "count"), [([2, 3], 13), ([2], 9), ([3], 4)])
def test_build_logs_the_window_count(
    scales: list[int], count: int, caplog: pytest.LogCaptureFixture
) -> None:
    """4x4 patch grid (64 px, patch 16): (4-2+1)² = 9 windows at scale 2, (4-3+1)² = 4 at 3."""
    with caplog.at_level("INFO", logger="hxpe.model.bases.winclip"):
        build_model(tiny_cfg(scales=scales))
    assert [r.message for r in caplog.records if r.name == "hxpe.model.bases.winclip"] == [
        f"WinCLIP (hxpe-tiny-winclip at 64 px): {count} windows per image at scales {tuple(scales)}"
    ]


def test_winclip_refuses_an_attention_pooled_vision_tower() -> None:
    from hxpe.model.loading import load_clip

    clip, tokenizer = load_clip(tiny_cfg().clip)
    clip.visual.attn_pool = torch.nn.Identity()
    with pytest.raises(
        ValueError,
        match=r"^WinCLIP needs a class-token CLIP vision tower \(no attentional pool\)\.$",
    ):
        WinClipModel(tiny_cfg(), clip, tokenizer)
