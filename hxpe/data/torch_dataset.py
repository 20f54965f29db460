"""A torch Dataset over an index: images and masks at the protocol resolution.

Images are read by the project's one reader (:mod:`hxpe.data.images`: EXIF orientation, transparency
over black, high bit depths rescaled) and come out as float32 RGB in [0, 1] (no normalisation: each
backbone normalises its own input, so CLIP and DINOv2 are fed from one preprocessed batch). Masks are
binarised by the stated rule: a raw mask pixel is a defect when it is non-zero (VisA's masks use small
integers), then resized as both authors resize masks (:func:`hxpe.data.images.mask_tensor`: the 0/255
PIL mask through torchvision's ``Resize``, i.e. Pillow's antialiased bilinear, then ``> 0.5``). The
image transform is theirs too (bicubic to ``size`` × ``size``, no crop at a square size).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from hxpe.data.images import load_image, mask_tensor, read_image, read_mask, to_tensor
from hxpe.data.index import DatasetIndex
from hxpe.data.mosaic import Mosaic, combine

__all__ = [
    "IndexBatch",
    "IndexDataset",
    "index_batches",
    "load_image",
    "load_mask",
    "phrases_from_batch",
]


def load_mask(path: str | Path | None, size: int) -> torch.Tensor:
    """Binary mask float32 [1, size, size]; zeros when ``path`` is empty (a normal image)."""
    if not path:
        return torch.zeros(1, size, size)
    return mask_tensor(read_mask(path), size)


class IndexDataset(torch.utils.data.Dataset):
    """Items of one index split: ``image``, ``mask``, ``label``, ``image_id``, ``cls``, ``phrase`` and,
    when ``references`` is given, ``reference`` (the class's normal reference image) and
    ``has_reference``.

    ``phrases`` maps image_id to the gated explainable phrase; a missing or ``None`` phrase becomes
    ``""`` (collation needs strings), which the model reads as "no phrase".

    ``mosaic`` (training only): AdaCLIP's augmentation (:mod:`hxpe.data.mosaic`); each item is
    drawn as a 2x2 mosaic of four images of its class (this split) with the mosaic's rate, keeping
    its own label, with no phrase; ``item["mosaic"]`` says which.
    """

    def __init__(
        self,
        index: DatasetIndex,
        image_size: int,
        split: str | None = "test",
        phrases: dict[str, str | None] | None = None,
        references: dict[str, str | None] | None = None,
        mosaic: Mosaic | None = None,
    ) -> None:
        frame = index.frame if split is None else index.split(split)
        self.index = index
        self.rows = frame.reset_index(drop=True)
        self.image_size = image_size
        self.phrases = phrases or {}
        self.references = references
        self._reference = lru_cache(maxsize=64)(self._load_reference)
        self.mosaic = mosaic
        self._by_class = {c: list(g.index) for c, g in self.rows.groupby("cls", sort=False)}

    def __len__(self) -> int:
        return len(self.rows)

    def _load_reference(self, image_id: str) -> torch.Tensor:
        return load_image(self.index.abs_path(self.index.row(image_id)["image"]), self.image_size)

    def _row_mask(self, row) -> np.ndarray | None:  # type: ignore[no-untyped-def]
        return read_mask(self.index.abs_path(row["mask"])) if row["mask"] else None

    def mosaic_of(self, tiles: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The image and mask tensors of the 2x2 mosaic of rows ``tiles`` (:func:`combine`)."""
        rows = [self.rows.iloc[t] for t in tiles]
        images = [read_image(self.index.abs_path(r["image"])) for r in rows]
        image, mask = combine(images, [self._row_mask(r) for r in rows])
        return to_tensor(image, self.image_size), mask_tensor(mask, self.image_size)

    def __getitem__(self, i: int) -> dict:
        row = self.rows.iloc[i]
        mosaic = self.mosaic is not None and self.mosaic.draw()
        if mosaic:
            image, mask = self.mosaic_of(self.mosaic.pick(self._by_class[row["cls"]]))
        else:
            image = load_image(self.index.abs_path(row["image"]), self.image_size)
            mask = load_mask(
                self.index.abs_path(row["mask"]) if row["mask"] else None, self.image_size
            )
        item = {
            "image": image,
            "mask": mask,
            "label": int(row["label"]),
            "image_id": row["image_id"],
            "cls": row["cls"],
            "phrase": "" if mosaic else self.phrases.get(row["image_id"]) or "",
        }
        if self.mosaic is not None:
            item["mosaic"] = mosaic
        if self.references is not None:
            ref_id = self.references.get(row["cls"])
            item["has_reference"] = ref_id is not None
            item["reference"] = (
                self._reference(ref_id)
                if ref_id is not None
                else torch.zeros(3, self.image_size, self.image_size)
            )
        return item


def phrases_from_batch(batch: dict) -> list[str | None]:
    """The batch's phrases with ``""`` turned back into ``None``."""
    return [p or None for p in batch["phrase"]]


@dataclass(frozen=True)
class IndexBatch:
    """A collated batch of :class:`IndexDataset` items, unpacked for a model call: what the
    inference paths (:mod:`hxpe.model.inference`) read, so they never see the loader's keys.

    Attributes:
        images: [B, 3, H, W] float32 in [0, 1].
        phrases: per image the gated phrase, ``None`` for none.
        image_ids, cls: per image.
        labels: [B] int64 (0 normal, 1 anomalous).
        references: [B, 3, H, W] the class's normal reference per image, or None.
        has_reference: [B] bool, which rows of ``references`` are real, or None.
    """

    images: torch.Tensor
    phrases: list[str | None]
    image_ids: list[str]
    cls: list[str]
    labels: torch.Tensor
    references: torch.Tensor | None = None
    has_reference: torch.Tensor | None = None

    @classmethod
    def from_collated(cls, batch: dict) -> IndexBatch:
        """Unpack a batch as collated from :class:`IndexDataset` items."""
        has_ref = batch.get("has_reference")
        return cls(
            images=batch["image"],
            phrases=phrases_from_batch(batch),
            image_ids=[str(i) for i in batch["image_id"]],
            cls=[str(c) for c in batch["cls"]],
            labels=torch.as_tensor(batch["label"]),
            references=batch.get("reference"),
            has_reference=None if has_ref is None else torch.as_tensor(has_ref),
        )


def index_batches(batches: Iterable[dict]) -> Iterator[IndexBatch]:
    """:meth:`IndexBatch.from_collated` over a loader's batches (lazily)."""
    return (IndexBatch.from_collated(b) for b in batches)
