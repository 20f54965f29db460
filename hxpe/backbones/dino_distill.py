"""The demo DINOv2 (transformers ``Dinov2Model``) distilled from the demo CLIP's image tower.

The student sees the scenes through DINOv2's own input path (ImageNet statistics, patch 8 as the
teacher's, so both grids match) and learns, through two linear heads that are discarded after
training, to reproduce the teacher's final-layer tokens: each patch token (cosine loss against the teacher's ``ln_post`` patch token)
and the CLS token. The teacher is the pretrained demo CLIP, frozen; the student starts from random
weights drawn from the seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hxpe.backbones.data import PretrainSet, resize
from hxpe.backbones.schedule import Curve, PretrainSchedule, batches
from hxpe.model.clip_tower import VisualEncoder
from hxpe.model.dinov2_prompt import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DinoRecipe(PretrainSchedule):
    """Settings of the DINOv2 distillation: a shorter schedule than the CLIP's."""

    steps: int = 200
    warmup: int = 30


@torch.no_grad()
def teacher_tokens(
    encoder: VisualEncoder, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's unit CLS and patch tokens after ``ln_post`` ([B, C], [B, N, C])."""
    feats = encoder(images)
    ln = encoder.visual.ln_post
    return F.normalize(ln(feats.cls_token), dim=-1), F.normalize(ln(feats.raw_patches[0]), dim=-1)


def train_dinov2(
    student: nn.Module, teacher: nn.Module, data: PretrainSet, recipe: DinoRecipe, seed: int
) -> Curve:
    """Distil ``teacher`` (an open_clip model) into ``student`` (a ``Dinov2Model``) in place."""
    encoder = VisualEncoder(teacher.visual, layers=[len(teacher.visual.transformer.resblocks)])
    width_s, width_t = student.config.hidden_size, encoder.width
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = nn.ModuleDict(
            {"cls": nn.Linear(width_s, width_t), "patch": nn.Linear(width_s, width_t)}
        )
    student.requires_grad_(True).train()
    params = list(student.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    curve = Curve()
    for step, idx, size in batches(recipe, len(data), opt, seed):
        images = resize(data.images[idx], size)
        t_cls, t_patch = teacher_tokens(encoder, images)
        hidden = student(pixel_values=(images - mean) / std).last_hidden_state
        s_cls = F.normalize(heads["cls"](hidden[:, 0]), dim=-1)
        s_patch = F.normalize(heads["patch"](hidden[:, -t_patch.shape[1] :]), dim=-1)
        loss_cls = (1 - (s_cls * t_cls).sum(-1)).mean()
        loss_patch = (1 - (s_patch * t_patch).sum(-1)).mean()
        loss = loss_cls + loss_patch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.log(step + 1, total=loss.detach(), cls=loss_cls.detach(), patch=loss_patch.detach())
        if (step + 1) % 50 == 0:
            log.info("dinov2 step %d/%d: %s", step + 1, recipe.steps, curve.rows[-1])
    student.requires_grad_(False).eval()
    return curve
