"""Training losses: per layer focal + dice (abnormal vs mask, normal vs 1 − mask), plus image
cross-entropy on the score logits (AnomalyCLIP's set; weights in ``train.loss_weights``).

Example:
    >>> p = torch.tensor([[[[0.9]], [[0.1]]]])  # [B=1, 2, 1, 1], confident "normal"
    >>> float(dice_loss(p[:, 0], torch.ones(1, 1, 1))) < 0.1
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hxpe.model.hxpe import ModelOutput


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss of (normal, abnormal) probabilities [B, 2, H, W] against a binary mask [B, H, W]."""
    p_true = torch.where(target > 0.5, probs[:, 1], probs[:, 0]).clamp(1e-6, 1.0)
    return (-((1.0 - p_true) ** gamma) * p_true.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 − soft Dice of ``pred`` [B, H, W] in [0, 1] against ``target`` [B, H, W], mean over B."""
    inter = (pred * target).flatten(1).sum(1)
    total = pred.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (1.0 - (2.0 * inter + smooth) / (total + smooth)).mean()


def hxpe_loss(
    out: ModelOutput,
    masks: torch.Tensor,
    labels: torch.Tensor,
    weights: dict[str, float],
    gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """Loss terms and their weighted ``total``.

    Args:
        masks: [B, 1, H, W] or [B, H, W] binary masks at the input resolution.
        labels: [B] 0 normal / 1 anomalous.
    """
    target = masks.reshape(masks.shape[0], *masks.shape[-2:]).float()
    focal = dice = target.new_zeros(())
    for probs in out.layer_maps:
        up = F.interpolate(probs, size=target.shape[-2:], mode="bilinear", align_corners=False)
        focal = focal + focal_loss(up, target, gamma)
        dice = dice + dice_loss(up[:, 1], target) + dice_loss(up[:, 0], 1.0 - target)
    image = F.cross_entropy(out.image_logits, labels.long())
    total = weights["focal"] * focal + weights["dice"] * dice + weights["image"] * image
    return {"total": total, "focal": focal, "dice": dice, "image": image}
