"""WinCLIP (Jeong et al., CVPR 2023) as a training-free base: zero-shot, CLIP re-encodes multi-scale
windows of patches (a model of its own: :class:`hxpe.model.bases.base.TrainingFreeBase`).

For every window position of each scale (``model.winclip.scales``, k×k patches, stride 1 over the patch
grid) the vision tower is run again on the class token plus only that window's patch tokens (the other
tokens are dropped, i.e. masked out of attention), so each window gets its own CLIP image embedding.
Each embedding is scored against the normal/abnormal text embeddings of WinCLIP's compositional prompt
ensemble (``prompts.yaml``: states x templates, each class's sentence embeddings averaged), the window
scores are spread back to the patches they cover by a harmonic mean, and the per-scale maps and the
whole-image (class token) score are combined by a harmonic mean across scales. The zero-shot image score
is the class token's abnormal probability, as in WinCLIP's paper (eq. 1) and anomalib's
``WinClipModel``; the max of the map enters the image score only in the few-shot WinCLIP+.

The computation follows anomalib's ``WinClipModel`` (zero-shot branch) and is pinned against it by
``tests/model/test_winclip.py`` on identical random weights. The backbone of the paper is open_clip
``ViT-B-16-plus-240`` with ``laion400m_e31`` weights at 240 px (``hxpe/weights.yaml``: winclip_clip).

Example (a tiny random CLIP in the backbone's shape: patch 16 at 64 px, a 4×4 grid, so 9 windows
of 2×2 patches and 4 of 3×3):
    >>> from hxpe.model.tiny import tiny_model_config
    >>> cfg = tiny_model_config(
    ...     "winclip",
    ...     clip={"model_name": "hxpe-tiny-winclip", "image_size": 64, "layers": [2],
    ...           "config_file": "hxpe/model/configs/hxpe-tiny-winclip.json"},
    ...     explain={"enabled": False}, vfm={"enabled": False},
    ... )
    >>> model = build_winclip(cfg)
    >>> model.scales, [tuple(w.shape) for w in model.windows]
    ((2, 3), [(9, 4), (4, 9)])
    >>> images = torch.rand(2, 3, 64, 64)
    >>> with torch.no_grad():
    ...     out = model(images, [None] * len(images))  # hxpe.model.bases.base.ModelOutput
    >>> out.anomaly_map.shape, out.image_score.shape, out.vfm_prompt
    (torch.Size([2, 64, 64]), torch.Size([2]), None)
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hxpe.model.bases.base import (
    BaseArithmetic,
    ModelOutput,
    ModelSettings,
    TrainingFreeBase,
    own_section,
    register_base,
)
from hxpe.model.clip_tower import OPENAI_MEAN, OPENAI_STD, OpenClipModule, interpolate_positions
from hxpe.model.explainable import ensemble
from hxpe.model.loading import load_clip


class WinClipConfig(BaseArithmetic):
    """WinCLIP zero-shot: multi-scale windows re-encoded by CLIP, no training."""

    template_set: str = Field("winclip", description="Template list in prompts.yaml.")
    scales: list[int] = Field(
        default_factory=lambda: [2, 3],
        description="Window sizes in patches (stride 1 over the patch grid); WinCLIP's 2x2 and 3x3.",
    )


log = logging.getLogger(__name__)


def window_indices(grid: tuple[int, int], size: int, stride: int = 1) -> torch.Tensor:
    """Flat patch indices of every ``size``×``size`` window over ``grid``: ``[n_windows, size²]``.

    Windows run row-major over their top-left corner; each row lists its patches row-major.

    >>> window_indices((3, 3), 2).tolist()
    [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    """
    h, w = grid
    if size > min(h, w):
        raise ValueError(
            f"WinCLIP window of {size}x{size} patches does not fit the {h}x{w} patch grid; lower "
            f"model.winclip.scales or raise model.clip.image_size."
        )
    ids = torch.arange(h * w).view(h, w)
    rows = range(0, h - size + 1, stride)
    cols = range(0, w - size + 1, stride)
    return torch.stack([ids[r : r + size, c : c + size].reshape(-1) for r in rows for c in cols])


def harmonic_to_patches(
    window_scores: torch.Tensor, windows: torch.Tensor, n_patches: int
) -> torch.Tensor:
    """Per patch, the harmonic mean of the scores of the windows covering it.

    Args:
        window_scores: [B, n_windows] in (0, 1].
        windows: [n_windows, k] patch indices of each window (:func:`window_indices`).
        n_patches: patches in the grid.

    Returns:
        [B, n_patches]; a patch no window covers gets 0.

    >>> harmonic_to_patches(torch.tensor([[0.5, 0.25]]), torch.tensor([[0, 1], [1, 2]]), 3)
    tensor([[0.5000, 0.3333, 0.2500]])
    """
    cover = torch.zeros(windows.shape[0], n_patches, dtype=window_scores.dtype)
    cover = cover.to(window_scores.device)
    cover.scatter_(1, windows.to(window_scores.device), 1.0)  # [n_windows, n_patches]
    inverse = (1.0 / window_scores) @ cover  # [B, n_patches]
    counts = cover.sum(dim=0)
    return torch.where(counts > 0, counts / inverse, torch.zeros_like(inverse))


class WinClipModel(nn.Module):
    """Zero-shot WinCLIP with the forward interface of :class:`hxpe.model.model.HXPEModel`.

    Args:
        cfg: the model configuration (``base: winclip``; ``clip`` names the backbone,
            ``winclip.scales`` the window sizes, ``winclip.temperature`` the softmax temperature).
        clip: an open_clip CLIP with a class-token ``VisionTransformer`` (frozen).
        tokenizer: its tokenizer.
    """

    mean: torch.Tensor
    std: torch.Tensor
    text: torch.Tensor

    def __init__(self, cfg: ModelSettings, clip: OpenClipModule, tokenizer: Any) -> None:
        super().__init__()
        visual = clip.visual
        if getattr(visual, "attn_pool", None) is not None or visual.pool_type != "tok":
            raise ValueError("WinCLIP needs a class-token CLIP vision tower (no attentional pool).")
        if cfg.explain.enabled or cfg.vfm.enabled:
            log.warning(
                "WinCLIP uses neither explainable prompts nor DINOv2 prompts; model.explain and "
                "model.vfm are ignored (disable them in the variant to silence this)."
            )
        self.cfg = cfg
        self.section = own_section(cfg, WinClip.name, WinClipConfig)
        self.clip = clip
        self.scales = tuple(self.section.scales)
        side = cfg.clip.image_size
        self.grid = (side // int(visual.patch_size[0]), side // int(visual.patch_size[1]))
        for k, scale in enumerate(self.scales):
            self.register_buffer(f"windows_{k}", window_indices(self.grid, scale), persistent=False)
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)
        prompts = ensemble(self.section.template_set)
        with torch.no_grad():
            text = [
                clip.encode_text(tokenizer(prompts.render(kind, cfg.object_name))).mean(dim=0)
                for kind in ("normal", "abnormal")
            ]
        self.register_buffer("text", F.normalize(torch.stack(text), dim=-1), persistent=False)

    @property
    def windows(self) -> list[torch.Tensor]:
        return [getattr(self, f"windows_{k}") for k in range(len(self.scales))]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """WinCLIP trains nothing."""
        return {}

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Class + patch tokens with positional embeddings, before ``ln_pre``: [B, 1 + N, C]."""
        v = self.clip.visual
        x = v.conv1((images - self.mean) / self.std)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        return x + interpolate_positions(v.positional_embedding, grid).to(x.dtype)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The joint-space embedding of token sequences [M, L, C] (class token first): [M, D]."""
        v = self.clip.visual
        x = v.transformer(v.ln_pre(tokens))
        joint: torch.Tensor = v.ln_post(x[:, 0]) @ v.proj
        return joint

    def window_embeddings(self, tokens: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Each window re-encoded alone (class token + its patches): [B, n_windows, D]."""
        b, n_win = tokens.shape[0], windows.shape[0]
        patches = tokens[:, 1:][:, windows]  # [B, n_windows, k, C]
        cls = tokens[:, :1, None].expand(-1, n_win, -1, -1)  # [B, n_windows, 1, C]
        seqs = torch.cat([cls, patches], dim=2).flatten(0, 1)  # [B * n_windows, 1 + k, C]
        return self.encode(seqs).view(b, n_win, -1)

    def abnormal_probability(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Softmax over (normal, abnormal) of cosine/τ, abnormal entry: [...]."""
        logits = F.normalize(embeddings, dim=-1) @ self.text.T / self.section.temperature
        return logits.softmax(dim=-1)[..., 1]

    def forward(
        self,
        images: torch.Tensor,
        phrases: list[str | None],
        references: torch.Tensor | None = None,
        has_reference: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Zero-shot score and map of [0, 1] images [B, 3, H, W]; ``phrases`` and references unused."""
        if len(phrases) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(phrases)} phrases")
        size = (images.shape[-2], images.shape[-1])
        side = self.cfg.clip.image_size
        x = images
        if size != (side, side):
            x = F.interpolate(images, size=(side, side), mode="bicubic", align_corners=False)
        tokens = self.tokens(x)
        image_embedding = self.encode(tokens)
        logits = F.normalize(image_embedding, dim=-1) @ self.text.T / self.section.temperature
        score = logits.softmax(dim=-1)[:, 1]
        n_patches = self.grid[0] * self.grid[1]
        per_scale = [score[:, None].expand(-1, n_patches)]
        for windows in self.windows:
            window_scores = self.abnormal_probability(self.window_embeddings(tokens, windows))
            per_scale.append(harmonic_to_patches(window_scores, windows, n_patches))
        stacked = torch.stack(per_scale)  # [1 + n_scales, B, n_patches]
        patch_map = stacked.shape[0] / (1.0 / stacked).sum(dim=0)
        patch_map = patch_map.view(-1, 1, *self.grid)
        anomaly_map = F.interpolate(patch_map, size=size, mode="bilinear", align_corners=False)
        return ModelOutput(score, anomaly_map[:, 0], [], None, logits)


def build_winclip(cfg: ModelSettings) -> WinClipModel:
    """Load the CLIP named by ``cfg.clip`` (frozen) and build zero-shot WinCLIP around it."""
    clip, tokenizer = load_clip(cfg.clip, seed=cfg.random_init_seed)
    model = WinClipModel(cfg, clip, tokenizer).eval()
    n_windows = sum(w.shape[0] for w in model.windows)
    log.info(
        "WinCLIP (%s at %d px): %d windows per image at scales %s",
        cfg.clip.model_name,
        cfg.clip.image_size,
        n_windows,
        model.scales,
    )
    return model


@register_base
class WinClip(TrainingFreeBase):
    """WinCLIP's entry in the base registry: a training-free base (:class:`WinClipModel`)."""

    name = "winclip"
    source = "Jeong et al., CVPR 2023 (window re-encoding; pinned against anomalib's WinClipModel)"

    @classmethod
    def zero_shot_model(cls, cfg: ModelSettings) -> nn.Module:
        return build_winclip(cfg)
