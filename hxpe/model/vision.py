"""CLIP's vision tower run block by block, so that prompts, v-v attention and attention biases can
enter without a modified copy of CLIP.

The open_clip modules (``conv1``, ``ln_pre``, the residual blocks, ``ln_post``, ``proj``) are used as
they are; positional embeddings are interpolated to the input grid on the fly, never written back.

Example (the tiny CLIP: 4 blocks, patch 14, joint space of 32 dimensions):
    >>> from hxpe.model.loading import load_clip
    >>> from hxpe.model.tiny import tiny_model_config
    >>> clip, _ = load_clip(tiny_model_config().clip)
    >>> enc = VisualEncoder(clip.visual, layers=[2, 4])
    >>> feats = enc(torch.rand(2, 3, 112, 112))  # [0, 1] RGB; normalised inside
    >>> feats.grid, [tuple(p.shape) for p in feats.patches], tuple(feats.cls.shape)
    ((8, 8), [(2, 64, 32), (2, 64, 32)], (2, 32))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hxpe.model.attention import DualPathAttention, multihead_attention

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisualFeatures:
    """What the vision tower gives the bases.

    Attributes:
        cls: joint-space CLS ``ln_post(x[0]) @ proj`` [B, D] of the q-k stream.
        patches: per selected layer, joint-space patch tokens ``ln_post(t) @ proj`` [B, N, D] (the
            v-v stream where v-v attention is attached).
        grid: (h, w) patch grid.
        raw_patches: per selected layer, the raw block output patch tokens [B, N, C] (same stream).
        cls_token: the raw final CLS token [B, C] of the q-k stream (before ``ln_post``).
    """

    cls: torch.Tensor
    patches: list[torch.Tensor]
    grid: tuple[int, int]
    raw_patches: list[torch.Tensor] | None = None
    cls_token: torch.Tensor | None = None


def interpolate_positions(
    pos: torch.Tensor, grid: tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """CLIP positional embeddings [1 + g*g, C] resized (``mode``, align_corners=False) to ``grid``;
    a new tensor (the weights are never written back)."""
    n = pos.shape[0] - 1
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"positional embedding of {n} patches is not a square grid")
    if grid == (side, side):
        return pos
    patch = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch.float(), size=grid, mode=mode, align_corners=False)
    patch = patch.to(pos.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([pos[:1], patch], dim=0)


class VisualEncoder(nn.Module):
    """Runs an open_clip ``VisionTransformer`` block by block.

    Args:
        visual: the (frozen) open_clip vision tower.
        layers: 1-based block numbers whose patch tokens are returned.
        pos_interpolation: positional-embedding resize to non-native grids (bilinear, bicubic).
        prompt_dtype: prompt tokens are rounded through this dtype before they enter the stream
            (AdaCLIP's ``.half()`` casts); None = no rounding.
    """

    def __init__(
        self,
        visual: nn.Module,
        layers: list[int],
        pos_interpolation: str = "bicubic",
        prompt_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if (
            getattr(visual, "attn_pool", None) is not None
            or getattr(visual, "pool_type", "tok") != "tok"
        ):
            raise ValueError(
                "Only class-token CLIP vision towers are supported (no attentional pool)."
            )
        n_blocks = len(visual.transformer.resblocks)
        if max(layers) > n_blocks:
            raise ValueError(
                f"model.clip.layers {layers} asks for block {max(layers)}, but this CLIP has "
                f"{n_blocks} blocks."
            )
        self.visual = visual
        self.layers = list(layers)
        self.pos_interpolation = pos_interpolation
        self.prompt_dtype = prompt_dtype
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    @property
    def width(self) -> int:
        return self.visual.conv1.out_channels

    @property
    def patch_size(self) -> int:
        return self.visual.conv1.kernel_size[0]

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        return size[0] // self.patch_size, size[1] // self.patch_size

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB to CLIP's input statistics."""
        return (images - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + class + positional embeddings, ``ln_pre``: [B, 1 + N, C]."""
        v = self.visual
        x = v.conv1(self.normalize(images))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = interpolate_positions(v.positional_embedding, grid, self.pos_interpolation)
        x = x + pos.to(x.dtype)
        return v.ln_pre(x)

    def to_joint(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``proj``: vision width to the joint image-text space."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    def forward(
        self,
        images: torch.Tensor,
        prompts: list[torch.Tensor] | None = None,
        key_bias: torch.Tensor | None = None,
        bias_blocks: frozenset[int] = frozenset(),
    ) -> VisualFeatures:
        """Encode [0, 1] images [B, 3, H, W].

        Args:
            prompts: per prompted block (0-based, from the first) prompt tokens [B, P, C]: appended
                after the patches at block 0, replacing the previous ones after.
            key_bias: [B, N] additive attention bias on the patch keys, used in ``bias_blocks``.
        """
        x = self.embed(images)
        n_patch = x.shape[1] - 1
        grid = self.grid(images.shape[-2:])
        n_prompt = prompts[0].shape[1] if prompts else 0
        vv: torch.Tensor | None = None
        taken = []
        for i, block in enumerate(self.blocks):
            if prompts and i < len(prompts):
                p = prompts[i] if self.prompt_dtype is None else prompts[i].to(self.prompt_dtype)
                x = _put_prompts(x, p, n_patch, first=i == 0)
                vv = None if vv is None else _put_prompts(vv, p, n_patch, first=i == 0)
            bias = None
            if key_bias is not None and i in bias_blocks:
                bias = F.pad(key_bias, (1, n_prompt))
            h = block.ln_1(x)
            if isinstance(block.attn, DualPathAttention):
                attn, attn_vv = block.attn.dual(h, bias)
                vv = (x if vv is None else vv) + block.ls_1(attn_vv)
            else:
                attn = multihead_attention(block.attn, h, bias)
            x = x + block.ls_1(attn)
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
            if i + 1 in self.layers:
                stream = x if vv is None else vv
                taken.append(stream[:, 1 : 1 + n_patch])
        return VisualFeatures(
            cls=self.to_joint(x[:, 0]),
            patches=[self.to_joint(t) for t in taken],
            grid=grid,
            raw_patches=taken,
            cls_token=x[:, 0],
        )


def _put_prompts(x: torch.Tensor, prompts: torch.Tensor, n_patch: int, first: bool) -> torch.Tensor:
    body = x if first else x[:, : 1 + n_patch]
    return torch.cat([body, prompts.to(x.dtype)], dim=1)
