"""Anomaly maps from patch-text similarities, and the Gaussian smoothing (torch, on the device).

Example:
    >>> m = torch.zeros(1, 33, 33); m[0, 16, 16] = 1.0
    >>> out = gaussian_blur(m, sigma=2.0)
    >>> round(float(out.sum()), 4), int(out[0].argmax())
    (1.0, 544)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_probabilities(
    patches: list[torch.Tensor], text: torch.Tensor, temperature: float, grid: tuple[int, int]
) -> list[torch.Tensor]:
    """Per layer softmax over (normal, abnormal) of patch·text/τ, as [B, 2, h, w].

    ``patches``: unit tokens [B, N, D] per layer; ``text``: unit embeddings [B, 2, D].
    """
    out = []
    with _full_precision(text):
        text = text.float()
        for p in patches:
            logits = torch.einsum("bnd,bkd->bkn", p.float(), text) / temperature
            out.append(logits.softmax(dim=1).view(p.shape[0], 2, *grid))
    return out


def _full_precision(t: torch.Tensor) -> torch.autocast:
    """Autocast switched off: the map head and the smoothing run in float32 even under bf16."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def aggregate(layer_probs: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of (p_abnormal + 1 − p_normal)/2: [B, h, w] in [0, 1]."""
    per_layer = [(p[:, 1] + 1.0 - p[:, 0]) / 2.0 for p in layer_probs]
    return torch.stack(per_layer).mean(dim=0)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear [B, h, w] -> [B, H, W]."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


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
