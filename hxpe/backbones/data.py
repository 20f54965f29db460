"""The pretraining set as tensors: images, patch-level defect coverage, caption tokens.

Example:
    >>> ps = PretrainSet.generate(seed=0, n=4, size=64)
    >>> tuple(ps.images.shape), ps.captions[1], ps.defects.tolist()
    ((4, 3, 64, 64), 'a cropped photo of a perfect red brick.', [2, 0, 6, 0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hxpe.backbones.scenes import DEFECT_WORDS, phrase_caption, pretraining_sample
from hxpe.data.demo import demo_classes

RENDER_SIZE = 128  # the demo data's image size: the backbones see pictures at the demo's scale


@dataclass
class PretrainSet:
    """Rendered scenes: ``images`` [N, 3, S, S] in [0, 1], ``masks`` [N, S, S], class and defect
    numbers (defect 0 = normal, k = the k-th of :data:`DEFECT_KINDS` + 1), captions, phrase
    sentences and hard-negative captions (the other state, :func:`~.scenes.counterfactual`)."""

    images: torch.Tensor
    masks: torch.Tensor
    classes: torch.Tensor
    defects: torch.Tensor
    captions: list[str]
    phrases: list[str]
    negatives: list[str]

    @classmethod
    def generate(cls, seed: int, n: int, size: int = RENDER_SIZE) -> PretrainSet:
        samples = [
            pretraining_sample(seed, i, size)
            for i in tqdm(range(n), desc="pretraining scenes", leave=False)
        ]
        return cls(
            images=torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2),
            masks=torch.from_numpy(np.stack([s.mask for s in samples])).float(),
            classes=torch.tensor([CLASS_NAMES.index(s.cls) for s in samples]),
            defects=torch.tensor(
                [0 if s.defect is None else DEFECT_KINDS.index(s.defect) + 1 for s in samples]
            ),
            captions=[s.caption for s in samples],
            phrases=[phrase_caption(s.cls, s.phrase) for s in samples],
            negatives=[s.negative for s in samples],
        )

    def __len__(self) -> int:
        return len(self.captions)


CLASS_NAMES: list[str] = sorted(demo_classes())
DEFECT_KINDS: list[str] = sorted(DEFECT_WORDS)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic, antialiased resize to ``size`` x ``size``, clamped to [0, 1] (as the demo's PIL
    bicubic input path)."""
    if images.shape[-1] == size:
        return images
    out = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True)
    return out.clamp(0, 1)


def patch_coverage(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Share of each patch covered by the defect mask: [N, grid * grid] in [0, 1]."""
    return F.adaptive_avg_pool2d(masks[:, None], grid).flatten(1)
