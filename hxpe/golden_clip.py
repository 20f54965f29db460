"""The golden folders' random CLIP, regenerated bit for bit from its seed.

``tests/golden/make_golden.py`` draws it (and writes ``clip.safetensors`` into a golden folder); a
folder committed without its 17 MB ``clip.safetensors`` (``tests/golden/records``) holds
``clip_source.json`` (seed and sha256) instead, and :func:`hxpe.equivalence.check_folder`
regenerates the weights with :func:`random_clip` and checks the hash.

Example:
    >>> sd = random_clip(0, SMALL_SPEC)
    >>> sd["visual.positional_embedding"].shape, sd["visual.positional_embedding"].dtype
    (torch.Size([5, 8]), torch.float16)
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

# The random CLIP (clip.json): ViT 24 x 128 (2 heads of 64), patch 14, native 224 px (16 x 16 grid);
# text 12 x 64 (1 head), context 77; embed_dim 64 (AdaCLIP needs text width == embed_dim).
CLIP_SPEC: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 224,
        "layers": 24,
        "width": 128,
        "patch_size": 14,
        "head_width": 64,
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 64,
        "heads": 1,
        "layers": 12,
    },
    "quick_gelu": True,
}
SMALL_SPEC: dict[str, Any] = {  # for the example only
    "embed_dim": 8,
    "vision_cfg": {"image_size": 28, "layers": 1, "width": 8, "patch_size": 14, "head_width": 8},
    "text_cfg": {"context_length": 4, "vocab_size": 10, "width": 8, "heads": 1, "layers": 1},
}


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.half()


def random_clip(seed: int, spec: dict[str, Any] = CLIP_SPEC) -> dict[str, torch.Tensor]:
    """The CLIP state dict in the OpenAI key layout, float16 (every value exact in fp16 and fp32).

    torch.Generator(seed); OpenAI-style scales: in_proj std w^-0.5, out_proj / c_proj std
    w^-0.5 (2 L)^-0.5, c_fc (2 w)^-0.5, conv1 fan_in^-0.5, token embedding 0.02, text positions
    0.01, class / positional embedding and projections w^-0.5, biases N(0, 0.02^2), LayerNorm
    weights 1 + N(0, 0.1^2), biases N(0, 0.05^2), logit_scale ln(1 / 0.07)."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return _fp16(mean + std * torch.randn(shape, generator=g))

    def layer_norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": normal((width,), 0.1, 1.0),
            f"{prefix}.bias": normal((width,), 0.05),
        }

    def blocks(prefix: str, width: int, layers: int) -> dict[str, torch.Tensor]:
        sd: dict[str, torch.Tensor] = {}
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for n in range(layers):
            p = f"{prefix}.resblocks.{n}"
            sd |= layer_norm(f"{p}.ln_1", width)
            sd[f"{p}.attn.in_proj_weight"] = normal((3 * width, width), width**-0.5)
            sd[f"{p}.attn.in_proj_bias"] = normal((3 * width,), 0.02)
            sd[f"{p}.attn.out_proj.weight"] = normal((width, width), proj_std)
            sd[f"{p}.attn.out_proj.bias"] = normal((width,), 0.02)
            sd |= layer_norm(f"{p}.ln_2", width)
            sd[f"{p}.mlp.c_fc.weight"] = normal((4 * width, width), (2 * width) ** -0.5)
            sd[f"{p}.mlp.c_fc.bias"] = normal((4 * width,), 0.02)
            sd[f"{p}.mlp.c_proj.weight"] = normal((width, 4 * width), proj_std)
            sd[f"{p}.mlp.c_proj.bias"] = normal((width,), 0.02)
        return sd

    v, t, d = spec["vision_cfg"], spec["text_cfg"], spec["embed_dim"]
    vw, patch = v["width"], v["patch_size"]
    grid = v["image_size"] // patch
    sd: dict[str, torch.Tensor] = {
        "visual.conv1.weight": normal((vw, 3, patch, patch), (3 * patch * patch) ** -0.5),
        "visual.class_embedding": normal((vw,), vw**-0.5),
        "visual.positional_embedding": normal((grid * grid + 1, vw), vw**-0.5),
    }
    sd |= layer_norm("visual.ln_pre", vw)
    sd |= blocks("visual.transformer", vw, v["layers"])
    sd |= layer_norm("visual.ln_post", vw)
    sd["visual.proj"] = normal((vw, d), vw**-0.5)
    tw = t["width"]
    sd["token_embedding.weight"] = normal((t["vocab_size"], tw), 0.02)
    sd["positional_embedding"] = normal((t["context_length"], tw), 0.01)
    sd |= blocks("transformer", tw, t["layers"])
    sd |= layer_norm("ln_final", tw)
    sd["text_projection"] = normal((tw, d), tw**-0.5)
    sd["logit_scale"] = _fp16(torch.tensor(math.log(1 / 0.07)))
    return sd


def state_sha256(sd: dict[str, torch.Tensor]) -> str:
    """A hash of a state dict's names, shapes, dtypes and bytes (independent of the file format)."""
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
