"""DINOv2 attention prompts: an anomaly-related prompt map on CLIP's patch grid.

Per patch, the distance of the image's DINOv2 patch feature to the class's normal reference
(``mutual_nn``: the nearest-neighbour distance plus the gap by which another image patch claims that
neighbour, zero exactly when the match is mutual; ``nn``: the nearest-neighbour distance alone),
min-max normalised and modulated by DINOv2's last-layer CLS self-attention salience:
``M = d̂ · ((1 − γ) + γ · ŝ)``. An image without a reference uses the zero-reference rarity (mean
distance to its k most similar own patches) instead of ``d``.

Example:
    >>> prompter = VfmPrompter(load_dinov2(cfg.vfm), cfg.vfm)  # doctest: +SKIP
    >>> m = prompter(images, grid=(37, 37), references=refs)  # [B, 37, 37] in [0, 1]  # doctest: +SKIP
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hxpe.model.config import VfmConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def minmax(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample min-max normalisation over all but the first dimension."""
    flat = x.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(x)


def reference_distance(feats: torch.Tensor, ref: torch.Tensor, mutual: bool) -> torch.Tensor:
    """[B, N] distance of each patch of ``feats`` [B, N, C] to ``ref`` [B, M, C] (unit vectors)."""
    sim = feats @ ref.transpose(1, 2)
    best, match = sim.max(dim=2)
    dist = 1.0 - best
    if mutual:
        claimed = sim.max(dim=1).values.gather(1, match)
        dist = dist + (claimed - best)
    return dist


def rarity(feats: torch.Tensor, k: int) -> torch.Tensor:
    """[B, N] mean distance of each patch to its ``k`` most similar other patches of the image."""
    sim = feats @ feats.transpose(1, 2)
    eye = torch.eye(sim.shape[1], dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(eye, -2.0)
    k = min(k, sim.shape[1] - 1)
    return 1.0 - sim.topk(k, dim=2).values.mean(dim=2)


class VfmPrompter(nn.Module):
    """Frozen DINOv2 plus the prompt-map computation."""

    def __init__(self, dinov2: nn.Module, cfg: VfmConfig) -> None:
        super().__init__()
        self.dinov2 = dinov2
        self.cfg = cfg
        self.patch = int(dinov2.config.patch_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def features(
        self, images: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit patch features [B, N, C] and CLS salience [B, N] on ``grid`` (aligned with CLIP)."""
        size = (grid[0] * self.patch, grid[1] * self.patch)
        x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        out = self.dinov2(pixel_values=(x - self.mean) / self.std, output_attentions=True)
        if not out.attentions:
            raise RuntimeError(
                "DINOv2 returned no attentions; load it with attn_implementation='eager'."
            )
        n_extra = out.last_hidden_state.shape[1] - grid[0] * grid[1]
        feats = F.normalize(out.last_hidden_state[:, n_extra:], dim=-1)
        salience = out.attentions[-1][:, :, 0, n_extra:].mean(dim=1)
        return feats, salience

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        grid: tuple[int, int],
        references: torch.Tensor | None = None,
        has_reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prompt map M̂ [B, h, w] in [0, 1]."""
        feats, salience = self.features(images, grid)
        dist = rarity(feats, self.cfg.rarity_k)
        if references is not None:
            has = (
                torch.ones(len(images), dtype=torch.bool, device=images.device)
                if has_reference is None
                else has_reference.to(images.device).bool()
            )
            if has.any():
                ref_feats, _ = self.features(references[has], grid)
                ref_dist = reference_distance(
                    feats[has], ref_feats, self.cfg.distance == "mutual_nn"
                )
                dist = dist.clone()
                dist[has] = ref_dist
        gamma = self.cfg.salience_weight
        m = minmax(dist) * ((1.0 - gamma) + gamma * minmax(salience))
        return minmax(m).view(-1, *grid)
