"""Zero-shot checks of the demo CLIP on held-out pretraining scenes (never the demo's aux or target
sets): how well the patch tokens and the image embedding tell a damaged object from a flawless one
with plain prompts. Recorded in the provenance; ``--compare`` reads them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hxpe.backbones.clip_pretrain import encode_text
from hxpe.backbones.data import CLASS_NAMES, PretrainSet, resize
from hxpe.evaluation.metrics import auroc
from hxpe.model.clip_tower import VisualEncoder

VALIDATION_OFFSET = 500_000  # the held-out scenes' seed: seed + this (another random stream)
PROMPTS = ("a photo of a flawless {}.", "a photo of a damaged {}.")


@torch.no_grad()
def zero_shot(clip: nn.Module, tokenizer, data: PretrainSet, size: int = 128) -> dict[str, float]:
    """Pixel AUROC of the last block's patch map and image AUROC of the CLS embedding (x100, one
    decimal), each from the (damaged - flawless) prompt similarity of the image's class."""
    encoder = VisualEncoder(clip.visual, layers=[len(clip.visual.transformer.resblocks)])
    feats = encoder(resize(data.images, size))
    texts = [[p.format(c) for p in PROMPTS] for c in CLASS_NAMES]
    emb = F.normalize(encode_text(clip, tokenizer(sum(texts, []))), dim=-1).view(len(texts), 2, -1)
    pair = emb[data.classes]  # [B, 2, D]
    direction = pair[:, 1] - pair[:, 0]
    patch = torch.einsum("bnd,bd->bn", F.normalize(feats.patches[0], dim=-1), direction)
    grid = feats.grid
    maps = F.interpolate(patch.view(-1, 1, *grid), size=data.masks.shape[-2:], mode="bilinear")
    image = (F.normalize(feats.cls, dim=-1) * direction).sum(-1)
    labels = (data.defects > 0).numpy()
    return {
        "pixel_auroc": round(
            100 * auroc(data.masks.numpy().reshape(-1) > 0.5, maps.numpy().reshape(-1)), 1
        ),
        "image_auroc": round(100 * auroc(labels, image.numpy()), 1),
    }
