"""Anomaly maps from patch-text similarities (per-layer logits, the bases' layer fusions), and the
Gaussian smoothing (torch, on the device).

Example:
    >>> m = torch.zeros(1, 33, 33); m[0, 16, 16] = 1.0
    >>> out = gaussian_blur(m, sigma=2.0)
    >>> round(float(out.sum()), 4), int(out[0].argmax())
    (1.0, 544)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hxpe.model.config import Fusion


def layer_logits(
    patches: list[torch.Tensor], text: torch.Tensor, temperature: float, grid: tuple[int, int]
) -> list[torch.Tensor]:
    """Per layer (normal, abnormal) logits ``patch·text/τ`` as [B, 2, h, w] (float32).

    ``patches``: unit tokens [B, N, D] per layer; ``text``: unit embeddings [B, 2, D].
    """
    out = []
    with _full_precision(text):
        text = text.float()
        for p in patches:
            logits = torch.einsum("bnd,bkd->bkn", p.float(), text) / temperature
            out.append(logits.reshape(p.shape[0], 2, *grid))
    return out


def _full_precision(t: torch.Tensor) -> torch.autocast:
    """Autocast switched off: the map head and the smoothing run in float32 even under bf16."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def upsample(
    maps: torch.Tensor, size: tuple[int, int], align_corners: bool = False
) -> torch.Tensor:
    """Bilinear [B, h, w] -> [B, H, W], or [B, C, h, w] -> [B, C, H, W]."""
    if maps.dim() == 3:
        return upsample(maps.unsqueeze(1), size, align_corners)[:, 0]
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=align_corners)


def layer_probabilities_at(
    logits: list[torch.Tensor], size: tuple[int, int], fusion: Fusion, align_corners: bool
) -> list[torch.Tensor]:
    """Per layer (normal, abnormal) probabilities [B, 2, H, W] at ``size``, as the base forms them:
    ``up(softmax(logits))`` (AnomalyCLIP, fusions ``*_probs``) or ``softmax(up(logits))``
    (AdaCLIP, ``mean_logits``). These are what the focal and dice losses see."""
    with _full_precision(logits[0]):
        if fusion == "mean_logits":
            return [upsample(lg.float(), size, align_corners).softmax(dim=1) for lg in logits]
        return [upsample(lg.float().softmax(dim=1), size, align_corners) for lg in logits]


def fuse_layers(
    logits: list[torch.Tensor], size: tuple[int, int], fusion: Fusion, align_corners: bool
) -> torch.Tensor:
    """The anomaly map [B, H, W] (before smoothing) from per-layer logits [B, 2, h, w].

    * ``sum_probs`` (AnomalyCLIP test.py:97-109): Σ_l (up(p1) + 1 − up(p0)) / 2, range [0, L];
    * ``mean_probs``: the same averaged over layers, range [0, 1];
    * ``mean_logits`` (AdaCLIP adaclip.py:529-540): q = softmax(mean_l up(logits)),
      (q1 + 1 − q0) / 2, range [0, 1].
    """
    with _full_precision(logits[0]):
        if fusion == "mean_logits":
            mean = torch.stack([upsample(lg.float(), size, align_corners) for lg in logits]).mean(0)
            q = mean.softmax(dim=1)
            return (q[:, 1] + 1.0 - q[:, 0]) / 2.0
        probs = layer_probabilities_at(logits, size, fusion, align_corners)
        per_layer = torch.stack([(p[:, 1] + 1.0 - p[:, 0]) / 2.0 for p in probs])
        return per_layer.sum(dim=0) if fusion == "sum_probs" else per_layer.mean(dim=0)


def map_range(fusion: Fusion, n_layers: int) -> float:
    """Upper end of the fused map's range (its lower end is 0)."""
    return float(n_layers) if fusion == "sum_probs" else 1.0


def _symmetric_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Pad by half-sample symmetric reflection (scipy.ndimage's 'reflect'), any width."""
    n = x.shape[dim]
    idx = torch.arange(-r, n + r, device=x.device) % (2 * n)
    idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
    return x.index_select(dim, idx)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian filter of [B, H, W] maps, like ``scipy.ndimage.gaussian_filter``."""
    if sigma <= 0:
        return maps
    r = int(truncate * sigma + 0.5)
    with _full_precision(maps):
        maps = maps.float()
        t = torch.arange(-r, r + 1, dtype=maps.dtype, device=maps.device)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        x = maps.unsqueeze(1)
        x = _symmetric_pad(_symmetric_pad(x, r, 2), r, 3)
        x = F.conv2d(x, kernel.view(1, 1, -1, 1))
        x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x[:, 0]
