"""AdaCLIP's mosaic augmentation: four training images of one class (and their masks) in a 2x2 grid.

As AdaCLIP builds it (``dataset/base_dataset.py:54-98``, after April-GAN), for a training item drawn
with probability ``aug_rate`` (``:104-108``: ``random.random() < aug_rate``, one draw per item):

* four records of the item's class are drawn without replacement (``random.sample(..., 4)``) from
  the split it trains on;
* the canvas is ``2W x 2H``, ``W x H`` the *first* image's size; image ``i`` is pasted at its own
  size at ``(i % 2 * W, i // 2 * H)`` (row-major: top-left, top-right, bottom-left, bottom-right);
* the masks are pasted the same way into an ``L`` canvas of zeros: a defect mask as 0/255, a normal
  image's as zeros (of the transposed size, ``np.zeros((W, H))``; kept, though it cannot change the
  result: it reaches only right of or below its tile, into tiles pasted after it or off the canvas);
* the item keeps its *own* label (``anomaly``), whatever the four tiles show; the mosaic then goes
  through the usual transforms (image bicubic, mask :func:`hxpe.data.images.mask_tensor`).

The rate is per training dataset (``dataset/mvtec.py:15`` 0.2; every other dataset 0.0), held by the
``adaclip`` recipe (:mod:`hxpe.model.recipes`). The project draws from its own seeded
``random.Random`` (not Python's global RNG); the explainable phrase of a mosaic item is none (the
item's own phrase describes one tile only).

Example:
    >>> from PIL import Image
    >>> tiles = [Image.new("RGB", (3, 2), (60 * i, 0, 0)) for i in range(4)]
    >>> masks = [None, np.ones((2, 3), bool), None, None]
    >>> image, mask = combine(tiles, masks)
    >>> image.size, np.asarray(image)[:, :, 0].tolist()
    ((6, 4), [[0, 0, 0, 60, 60, 60], [0, 0, 0, 60, 60, 60], [120, 120, 120, 180, 180, 180], [120, 120, 120, 180, 180, 180]])
    >>> mask.astype(int).tolist()
    [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")
TILES = 4


@dataclass
class Mosaic:
    """The mosaic's rate and its seeded RNG (one ``random()`` per item, then ``sample(_, 4)``)."""

    rate: float
    seed: int
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"mosaic rate must be in [0, 1]; got {self.rate}")
        self.rng = random.Random(self.seed)

    def draw(self) -> bool:
        """Whether the next item becomes a mosaic (AdaCLIP: ``random.random() < aug_rate``)."""
        return self.rng.random() < self.rate

    def pick(self, population: Sequence[T]) -> list[T]:
        """Four distinct members of ``population`` (the item's class), in drawing order."""
        if len(population) < TILES:
            raise ValueError(
                f"a mosaic needs {TILES} images of the class; it has {len(population)}. Lower "
                f"train.mosaic_rates for this dataset or use a recipe without the mosaic."
            )
        return self.rng.sample(list(population), TILES)


def _mask_tile(image: Image.Image, mask: np.ndarray | None) -> Image.Image:
    if mask is None:  # AdaCLIP: Image.fromarray(np.zeros((img.size[0], img.size[1])), mode='L')
        w, h = image.size
        return Image.fromarray(np.zeros((w, h), np.uint8), mode="L")
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def combine(
    images: Sequence[Image.Image], masks: Sequence[np.ndarray | None]
) -> tuple[Image.Image, np.ndarray]:
    """The 2x2 mosaic of four RGB images and their bool masks (None = a normal image): the RGB
    mosaic and its bool mask (module docstring)."""
    if len(images) != TILES or len(masks) != TILES:
        raise ValueError(f"combine needs {TILES} images and {TILES} masks")
    w, h = images[0].size
    canvas = Image.new("RGB", (2 * w, 2 * h))
    mask_canvas = Image.new("L", (2 * w, 2 * h))
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        corner = (i % 2 * w, i // 2 * h)
        canvas.paste(image, corner)
        mask_canvas.paste(_mask_tile(image, mask), corner)
    return canvas, np.asarray(mask_canvas) > 0
