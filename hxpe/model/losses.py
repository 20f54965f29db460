"""Training losses as both authors write them (``loss.py``, the same file in zqhang/AnomalyCLIP@45ed4dd
and caoyunkang/AdaCLIP@e27ee32):
per layer focal + dice (abnormal vs mask, normal vs 1 − mask) on the base's per-layer probability
maps, plus an image loss on the score (AnomalyCLIP cross-entropy of the logits, AdaCLIP focal on the
softmax), weighted per base (AnomalyCLIP λ = 4 on the map terms, its train.py:50, 102).

Example:
    >>> p = torch.tensor([[0.9, 0.1]])  # one image, confident "normal"
    >>> round(float(focal_loss(p, torch.tensor([0]))), 6)  # -(1-pt)^2 log pt, pt = 0.9 + 1e-5 - ...
    0.001054
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hxpe.model.bases.base import Fusion, LossWeights, ModelOutput
from hxpe.model.config import ModelConfig, TrainConfig
from hxpe.model.model import layer_probabilities_at, upsample


@dataclass(frozen=True)
class LossSpec:
    """Everything the loss needs, resolved from the model's base and the training settings."""

    weights: LossWeights
    gamma: float
    smooth: float
    image_loss: str  # "ce" | "focal"
    fusion: Fusion
    align_corners: bool

    @classmethod
    def resolve(cls, model_cfg: ModelConfig, train_cfg: TrainConfig) -> LossSpec:
        arith = model_cfg.arithmetic
        return cls(
            weights=dict(train_cfg.loss_weights or arith.loss_weights),
            gamma=train_cfg.focal_gamma,
            smooth=train_cfg.focal_smooth,
            image_loss=arith.image_loss,
            fusion=arith.layer_fusion,
            align_corners=arith.align_corners,
        )


def focal_loss(
    probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5
) -> torch.Tensor:
    """Focal loss with label smoothing (the authors' ``FocalLoss``, alpha None), mean over elements.

    ``probs``: class probabilities [N, C] or [B, C, H, W]; ``target``: class indices [N] or
    [B, H, W] (any shape with that many elements). The one-hot target is clamped to
    [smooth/(C−1), 1 − smooth], ``pt = Σ onehot·p + smooth`` and the loss is −(1 − pt)^γ log pt.
    """
    c = probs.shape[1]
    flat = probs.movedim(1, -1).reshape(-1, c) if probs.dim() > 2 else probs
    onehot = F.one_hot(target.reshape(-1).long(), c).to(flat.dtype)
    if smooth:
        onehot = onehot.clamp(smooth / (c - 1), 1.0 - smooth)
    pt = (onehot * flat).sum(dim=1) + smooth
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 − mean over the first dimension N of the soft Dice (the authors' ``BinaryDiceLoss``):
    ``(2 Σ p·t + 1) / (Σ p + Σ t + 1)`` per row of ``pred.view(N, -1)``."""
    n = target.shape[0]
    p, t = pred.reshape(n, -1), target.reshape(n, -1)
    dice = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1.0 - dice.sum() / n


def _authors_target(masks: torch.Tensor) -> torch.Tensor:
    """Binary target as the authors' ``gt = img_mask.squeeze()`` then ``> 0.5``: [B, H, W], or
    [H, W] for one image (their dice then averages over the H image rows)."""
    return (masks.reshape(masks.shape[0], *masks.shape[-2:]).squeeze(0) > 0.5).float()


def hxpe_loss(
    out: ModelOutput, masks: torch.Tensor, labels: torch.Tensor, spec: LossSpec
) -> dict[str, torch.Tensor]:
    """Loss terms (focal and dice summed over layers, unweighted) and their weighted ``total``.

    Args:
        masks: [B, 1, H, W] or [B, H, W] masks at the input resolution.
        labels: [B] 0 normal / 1 anomalous.
    """
    target = _authors_target(masks)
    size = (masks.shape[-2], masks.shape[-1])
    if out.layer_logits is not None:
        probs = layer_probabilities_at(out.layer_logits, size, spec.fusion, spec.align_corners)
    else:  # models that give probability maps only
        probs = [upsample(m, size, spec.align_corners) for m in out.layer_maps]
    squeeze = target.dim() == 2
    focal = dice = target.new_zeros(())
    for p in probs:
        p = p[0] if squeeze else p  # [2, H, W] for one image
        focal = focal + focal_loss(
            p.unsqueeze(0) if squeeze else p, target, spec.gamma, spec.smooth
        )
        dice = dice + dice_loss(p[..., 1, :, :], target) + dice_loss(p[..., 0, :, :], 1.0 - target)
    labels = (labels.reshape(-1).float() > 0.5).long()
    if spec.image_loss == "focal":
        image = focal_loss(out.image_logits.softmax(dim=-1), labels, spec.gamma, spec.smooth)
    else:
        image = F.cross_entropy(out.image_logits, labels)
    w = spec.weights
    total = w["focal"] * focal + w["dice"] * dice + w["image"] * image
    return {"total": total, "focal": focal, "dice": dice, "image": image}
