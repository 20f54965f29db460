"""VisualEncoder and TextEncoder without prompts equal open_clip's own ``encode_image`` /
``encode_text`` to 1e-5, at the native resolution and at a non-native one (open_clip then gets its
positional embedding resized by its own ``resize_pos_embed``), on the tiny config and on the golden
CLIP of the authors' outputs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import resize_pos_embed

from hxpe.equivalence import golden_dir
from hxpe.model.clip_tower import OPENAI_MEAN, OPENAI_STD, ClipConfig, TextEncoder, VisualEncoder
from hxpe.model.loading import load_clip, set_activation
from hxpe.model.tiny import TINY_MODEL

GOLDEN = golden_dir()
needs_golden = pytest.mark.skipif(
    GOLDEN is None, reason="golden folder not found (HXPE_GOLDEN_DIR or ../shared/golden)"
)


def _openclip_image(clip: torch.nn.Module, images: torch.Tensor, mode: str) -> torch.Tensor:
    """open_clip's encode_image on [0, 1] images, its positional grid resized by open_clip."""
    clip = copy.deepcopy(clip)
    patch = clip.visual.conv1.kernel_size[0]
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    clip.visual.grid_size = grid
    state = {"visual.positional_embedding": clip.visual.positional_embedding.detach().clone()}
    resize_pos_embed(state, clip, interpolation=mode, antialias=False)
    clip.visual.positional_embedding = torch.nn.Parameter(state["visual.positional_embedding"])
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return clip.encode_image((images - mean) / std)


def _check(clip: torch.nn.Module, tokenizer: object, native: int, other: int) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for side in (native, other):
            images = torch.rand(2, 3, side, side, generator=g)
            # at the native size neither side resizes the positions: one mode suffices there
            for mode in ("bicubic",) if side == native else ("bicubic", "bilinear"):
                ours = VisualEncoder(clip.visual, [1], pos_interpolation=mode)(images).cls
                theirs = _openclip_image(clip, images, mode)
                assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (side, mode)
        tokens = tokenizer(["a photo of a damaged bottle.", "flawless object", "x"])
        ours = TextEncoder(clip)(tokens)
        theirs = F.normalize(clip.encode_text(tokens), dim=-1)
        assert torch.allclose(ours, theirs, atol=1e-5)
        full = TextEncoder(clip)
        full.trim_context = False
        assert torch.allclose(full(tokens), theirs, atol=1e-5)


def test_tiny_clip_equals_open_clip() -> None:
    clip, tokenizer = load_clip(ClipConfig.model_validate(TINY_MODEL["clip"]))
    _check(clip, tokenizer, native=112, other=168)


@needs_golden
def test_golden_clip_equals_open_clip() -> None:
    from hxpe.equivalence import golden_clip

    with golden_clip(GOLDEN) as spec:
        clip, tokenizer = load_clip(ClipConfig(**spec, image_size=224))
        _check(clip, tokenizer, native=224, other=322)


@pytest.mark.parametrize("kind", ["gelu", "quick_gelu"])
def test_activation_option_swaps_every_mlp(kind: str) -> None:
    from open_clip.transformer import QuickGELU

    cfg = ClipConfig.model_validate({**TINY_MODEL["clip"], "activation": kind})
    clip, _ = load_clip(cfg)
    want = torch.nn.GELU if kind == "gelu" else QuickGELU
    acts = [m.mlp.gelu for m in clip.modules() if hasattr(m, "mlp") and hasattr(m.mlp, "gelu")]
    assert len(acts) == 4 + 2 and all(isinstance(a, want) for a in acts)
    assert set_activation(clip, kind) == 4 + 2  # the count of replaced activations


def test_set_activation_logs_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clip, _ = load_clip(ClipConfig.model_validate(TINY_MODEL["clip"]))
    with caplog.at_level("INFO", logger="hxpe.model.loading"):
        set_activation(clip, "gelu")
    assert caplog.records[-1].getMessage() == "CLIP MLP activation set to gelu in 6 blocks"


def test_set_activation_refuses_a_model_without_mlp_activations() -> None:
    with pytest.raises(
        ValueError, match=r"^No MLP activations found to set to 'gelu' in Linear\.$"
    ):
        set_activation(torch.nn.Linear(2, 2), "gelu")
