"""Hybrid semantic fusion (AdaCLIP-style): the image feature used for the image score fuses the CLS
with the centre of k-means clusters of the most abnormal patch tokens.

Batched torch k-means (no per-image scikit-learn call); assignments are computed without gradient,
centres with it.

Example:
    >>> x = torch.nn.functional.normalize(torch.randn(2, 50, 8), dim=-1)
    >>> kmeans(x, k=4, iters=5).shape
    torch.Size([2, 4, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kmeans(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Cosine k-means centres [B, k, C] of ``x`` [B, n, C]; deterministic, evenly spaced init."""
    n = x.shape[1]
    k = min(k, n)
    init = torch.linspace(0, n - 1, k, device=x.device).round().long()
    centres = x[:, init]
    for _ in range(iters + 1):
        with torch.no_grad():
            assign = (x @ centres.transpose(1, 2)).argmax(dim=2)
        onehot = F.one_hot(assign, k).to(x.dtype)  # [B, n, k]
        counts = onehot.sum(dim=1)  # [B, k]
        summed = onehot.transpose(1, 2) @ x
        mean = summed / counts.clamp(min=1).unsqueeze(-1)
        centres = torch.where(counts.unsqueeze(-1) > 0, mean, centres)
    return centres


def hybrid_semantic_fusion(
    patches: list[torch.Tensor],
    abnormal_prob: torch.Tensor,
    cls: torch.Tensor,
    k: int,
    topk_factor: int,
    alpha: float,
    iters: int,
) -> torch.Tensor:
    """Fused image feature [B, D]: normalize(α · mean cluster centre + (1 − α) · CLS).

    Args:
        patches: per layer unit patch tokens [B, N, D].
        abnormal_prob: [B, N] mean abnormal probability over layers (selects the patches).
        cls: unit CLS feature [B, D].
    """
    tokens = F.normalize(torch.stack(patches).mean(dim=0), dim=-1)
    m = min(tokens.shape[1], k * topk_factor)
    top = abnormal_prob.topk(m, dim=1).indices
    chosen = tokens.gather(1, top.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    centre = F.normalize(kmeans(chosen, k, iters).mean(dim=1), dim=-1)
    return F.normalize(alpha * centre + (1.0 - alpha) * cls, dim=-1)
