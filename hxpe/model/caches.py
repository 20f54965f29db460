"""The inference caches: prompt embeddings per phrase and DINOv2 features per normal reference.

The model modules hold no cache. The fast inference path (:func:`hxpe.model.inference.infer_fast`)
owns an :class:`InferenceCaches` (built by :func:`hxpe.model.inference.inference_caches`) and passes
its members to :meth:`hxpe.model.hxpe.HXPEModel.forward` per call (``phrase_cache=``,
``reference_cache=``); a caller that keeps one object across calls keeps the entries (and the hit
counts) across them.

Example:
    >>> caches = InferenceCaches(references=ReferenceCache(maxsize=2))
    >>> caches.stats()
    {'phrase_cache': None, 'reference_cache': {'hits': 0, 'misses': 0}}
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from hxpe.model.vfm import row_keys

CachedReference = tuple[torch.Tensor, torch.Tensor]  # (patch features [N, C], distance scale [])


class PhraseCache:
    """An LRU of prompt embeddings keyed by (kind, phrase), tied to a parameter signature."""

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._signature: tuple | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()

    def check(self, signature: tuple) -> None:
        """Empty the cache when ``signature`` (parameters, autocast) differs from the last one."""
        if signature != self._signature:
            self._data.clear()
            self._signature = signature

    def get(self, key: Hashable) -> torch.Tensor | None:
        hit = self._data.get(key)
        if hit is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return hit

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)


class ReferenceCache:
    """Frozen DINOv2 features (and calibration scales) of normal references kept across batches
    (LRU, exact match).

    DINOv2 is frozen, so the features depend only on the reference pixels and the grid: no training
    invalidation is needed. Entries are compared exactly with :func:`torch.equal`.
    """

    def __init__(self, maxsize: int = 32) -> None:
        self.maxsize = maxsize
        self._data: list[tuple[bytes, tuple[int, int], torch.Tensor, CachedReference]] = []
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, reference: torch.Tensor, grid: tuple[int, int]) -> CachedReference | None:
        key = row_keys(reference[None])[0]
        for i, (k, g, ref, feats) in enumerate(self._data):
            same = k == key and g == grid and ref.shape == reference.shape
            if same and ref.device == reference.device and torch.equal(ref, reference):
                self._data.append(self._data.pop(i))
                self.hits += 1
                return feats
        self.misses += 1
        return None

    def put(self, reference: torch.Tensor, grid: tuple[int, int], value: CachedReference) -> None:
        key = row_keys(reference[None])[0]
        detached = (value[0].detach(), value[1].detach())
        self._data.append((key, grid, reference.detach().clone(), detached))
        while len(self._data) > self.maxsize:
            self._data.pop(0)


@dataclass
class InferenceCaches:
    """The caches of one inference run, owned by the caller; ``None`` = that cache is off."""

    phrases: PhraseCache | None = None
    references: ReferenceCache | None = None

    def forward_options(self) -> dict[str, PhraseCache | ReferenceCache | None]:
        """The keywords of :meth:`hxpe.model.hxpe.HXPEModel.forward` that take the caches."""
        return {"phrase_cache": self.phrases, "reference_cache": self.references}

    def stats(self) -> dict[str, dict[str, int] | None]:
        """Hits and misses per cache (None for a cache that is off)."""
        return {
            "phrase_cache": _counts(self.phrases),
            "reference_cache": _counts(self.references),
        }


def _counts(cache: PhraseCache | ReferenceCache | None) -> dict[str, int] | None:
    return None if cache is None else {"hits": cache.hits, "misses": cache.misses}
