"""Inference over a dataset: the fast batched path and the naive per-image path it is measured against.

Both take an iterable of batches as collated from :class:`hxpe.data.torch_dataset.IndexDataset`
(keys ``image``, ``phrase``, ``image_id``, ``cls``, ``label`` and optionally ``reference``,
``has_reference``) and yield one :class:`BatchResult` per model call, so a caller can stream maps to
disk and keep host memory flat whatever the dataset size.

* :func:`infer_naive` mirrors the anchors' test loops (AnomalyCLIP/AdaCLIP ``test.py``): batch 1,
  fp32, no autograd graph but no inference mode, the text prompts encoded for every image over the full
  77-token context, no caches, the map copied to the CPU and smoothed there with
  :func:`scipy.ndimage.gaussian_filter` one image at a time. It calls the model's own forward with
  ``trim_text=False, sigma=0``.
* :func:`infer_fast`: whole batches; the prompts of the distinct phrases of a batch encoded once and
  kept in an LRU across batches (:class:`PhraseCache`, owned here and passed to the model per call,
  emptied whenever a trainable parameter changes); the DINOv2 features of each distinct normal reference computed once
  (:class:`hxpe.model.vfm.ReferenceCache`); the text tower run only up to the last EOT token; bf16
  autocast on a GPU (the map head and the Gaussian stay float32); fused scaled-dot-product attention
  everywhere, the v-v path included; CLIP and DINOv2 fed from the one resized batch; smoothing on the
  device; one device-to-host copy per batch; optional ``torch.compile``.

In float32 both paths give the same scores and maps (within 1e-3; ``tests/test_inference_paths.py``).

Example (the tiny model over the demo target's 8 test images; on a GPU, move the model there and
pass ``device="cuda"`` and ``num_workers`` to :func:`make_loader`):
    >>> from hxpe.data.index import load_index
    >>> from hxpe.data.torch_dataset import IndexDataset
    >>> index = load_index(cfg.layout.index_dir("demo_target"))
    >>> loader = make_loader(IndexDataset(index, image_size=112), batch_size=4)
    >>> for res in infer_fast(tiny_model, loader):
    ...     print(len(res), res.anomaly_maps.shape, res.vfm_prompts.shape, res.image_ids[0])
    4 (4, 112, 112) (4, 8, 8) demo_target/bracket/test/...
    4 (4, 112, 112) (4, 8, 8) demo_target/gravel/test/...
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader, Dataset

from hxpe.data.torch_dataset import phrases_from_batch
from hxpe.model.hxpe import HXPEModel
from hxpe.model.loading import model_device
from hxpe.model.maps import map_range
from hxpe.model.vfm import ReferenceCache
from hxpe.seeding import worker_init_fn

log = logging.getLogger(__name__)

Precision = str  # "fp32" | "bf16" | "auto" (bf16 on CUDA, fp32 elsewhere)


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


# The cross-batch phrase caches live here, beside the inference code, keyed by model (the model
# modules hold no cache and no switch flipped from outside; they receive the cache per call).
_PHRASE_CACHES: weakref.WeakKeyDictionary[HXPEModel, PhraseCache] = weakref.WeakKeyDictionary()


@dataclass
class BatchResult:
    """Outputs of one model call, on the host.

    Attributes:
        image_ids, cls: per image.
        labels: [B] int64 (0 normal, 1 anomalous).
        image_scores: [B] float32.
        anomaly_maps: [B, H, W] float32, smoothed.
        vfm_prompts: [B, h, w] float32, or None.
    """

    image_ids: list[str]
    cls: list[str]
    labels: np.ndarray
    image_scores: np.ndarray
    anomaly_maps: np.ndarray
    vfm_prompts: np.ndarray | None

    def __len__(self) -> int:
        return len(self.image_ids)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> DataLoader:
    """An ordered DataLoader for inference: workers seeded by :func:`hxpe.seeding.worker_init_fn`,
    pinned host memory when the model runs on CUDA (so host-to-device copies can overlap)."""
    cuda = torch.device(device).type == "cuda"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=cuda,
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def _labels(batch: dict, n: int) -> np.ndarray:
    labels = batch.get("label")
    if labels is None:
        return np.full(n, -1, dtype=np.int64)
    return np.asarray(torch.as_tensor(labels), dtype=np.int64).reshape(n)


def _class_names(batch: dict) -> dict[str, list[str]]:
    """``{"class_names": [...]}`` when the batch carries classes (bases whose prompts name the
    class use them), else ``{}`` (models without that keyword keep working)."""
    values = batch.get("cls")
    return {} if values is None else {"class_names": [str(v) for v in values]}


def _strings(batch: dict, key: str, n: int) -> list[str]:
    values = batch.get(key)
    return [str(v) for v in values] if values is not None else [""] * n


def enable_phrase_cache(model: HXPEModel, maxsize: int = 4096) -> PhraseCache | None:
    """Attach (or return the attached) cross-batch phrase cache; None when the text prompts depend
    on the image (AdaCLIP dynamic prompts in the language branch), where there is nothing to reuse."""
    if model.prompter.text_conditioned:
        log.info(
            "Text prompts of base %s depend on the image (dynamic language prompts): phrase "
            "embeddings are computed per image and not cached.",
            model.cfg.base,
        )
        return None
    if model not in _PHRASE_CACHES:
        _PHRASE_CACHES[model] = PhraseCache(maxsize)
    return _PHRASE_CACHES[model]


def phrase_cache_of(model: HXPEModel) -> PhraseCache | None:
    """The phrase cache enabled for ``model``, or None."""
    return _PHRASE_CACHES.get(model)


def enable_reference_cache(model: HXPEModel, maxsize: int = 32) -> ReferenceCache | None:
    """Attach (or return) the cross-batch cache of the references' DINOv2 features."""
    if model.vfm is None:
        return None
    if model.vfm.reference_cache is None:
        model.vfm.reference_cache = ReferenceCache(maxsize)
    return model.vfm.reference_cache


def disable_caches(model: HXPEModel) -> None:
    """Drop the phrase and reference caches (the model's default state)."""
    _PHRASE_CACHES.pop(model, None)
    if model.vfm is not None:
        model.vfm.reference_cache = None


def maybe_compile(model: HXPEModel, device: torch.device) -> bool:
    """``torch.compile`` the vision tower, the text tower and DINOv2 in place (parameter names and
    checkpoints unchanged). Only on CUDA; elsewhere it logs that it is skipped and returns False."""
    if device.type != "cuda":
        log.info("torch.compile skipped: only used on CUDA (device is %s).", device)
        return False
    if getattr(model, "_hxpe_compiled", False):
        return True
    if not isinstance(model, HXPEModel):
        log.info("torch.compile skipped: %s is not an HXPE model.", type(model).__name__)
        return False
    model.visual.compile(dynamic=False)
    model.text.encoder.compile(dynamic=True)
    if model.vfm is not None:
        model.vfm.dinov2.compile(dynamic=False)
    model._hxpe_compiled = True
    log.info("torch.compile enabled for the CLIP vision/text towers and DINOv2.")
    return True


def use_bf16(precision: Precision, device: torch.device) -> bool:
    if precision == "auto":
        return device.type == "cuda"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto'; got {precision!r}")
    return precision == "bf16"


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device, non_blocking=True)


def infer_fast(
    model: HXPEModel,
    batches: Iterable[dict],
    *,
    precision: Precision = "auto",
    compile: bool = False,
    phrase_cache: bool = True,
    reference_cache: bool = True,
) -> Iterator[BatchResult]:
    """The fast path: one model call per batch (see the module docstring).

    Args:
        precision: ``"auto"`` = bf16 autocast on CUDA, fp32 elsewhere; ``"fp32"``; ``"bf16"``.
        compile: ``torch.compile`` the backbones first (CUDA only; skipped with a log line on CPU).
        phrase_cache, reference_cache: keep text / reference features across batches.
    """
    device = model_device(model)
    model.eval()
    hxpe_model = isinstance(model, HXPEModel)  # other models with the same forward: no caches
    cache = enable_phrase_cache(model) if phrase_cache and hxpe_model else None
    if reference_cache and hxpe_model:
        enable_reference_cache(model)
    if compile and hxpe_model:
        maybe_compile(model, device)
    if hxpe_model:
        model.reset_rng()
    bf16 = use_bf16(precision, device)
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16),
    ):
        for batch in batches:
            images = batch["image"].to(device, non_blocking=True)
            has_ref = batch.get("has_reference")
            out = model(
                images,
                phrases_from_batch(batch),
                references=_to(batch.get("reference"), device),
                has_reference=None if has_ref is None else torch.as_tensor(has_ref).to(device),
                **({**_class_names(batch), "phrase_cache": cache} if hxpe_model else {}),
            )
            n = images.shape[0]
            host = [out.anomaly_map.float(), out.image_score.float()]
            if out.vfm_prompt is not None:
                host.append(out.vfm_prompt.float())
            host = [t.cpu() for t in host]  # one synchronisation per batch
            yield BatchResult(
                image_ids=_strings(batch, "image_id", n),
                cls=_strings(batch, "cls", n),
                labels=_labels(batch, n),
                image_scores=host[1].numpy(),
                anomaly_maps=host[0].numpy(),
                vfm_prompts=host[2].numpy() if len(host) > 2 else None,
            )


@contextmanager
def naive_mode(model: HXPEModel) -> Iterator[float]:
    """The model as the anchors run it: no reference cache (the phrase cache is never passed in
    this mode); yields the σ to apply on the CPU. Callers pass ``trim_text=False`` and ``sigma=0``
    per call; the reference cache is restored afterwards. Other models (WinCLIP) have no caches and
    no smoothing to move: σ 0."""
    if not isinstance(model, HXPEModel):
        yield 0.0
        return
    refs = model.vfm.reference_cache if model.vfm is not None else None
    if model.vfm is not None:
        model.vfm.reference_cache = None
    try:
        yield model.cfg.sigma
    finally:
        if model.vfm is not None:
            model.vfm.reference_cache = refs


def _naive_options(batch: dict, i: int) -> dict:
    """HXPE forward options of the naive path for image ``i``: its class name, the full 77-token
    text context, no on-device smoothing."""
    names = _class_names(batch)
    return {
        **({"class_names": names["class_names"][i : i + 1]} if names else {}),
        "trim_text": False,
        "sigma": 0.0,
    }


def infer_naive(model: HXPEModel, batches: Iterable[dict]) -> Iterator[BatchResult]:
    """The anchors' per-image loop (see the module docstring); yields one result per image.

    Scores with ``score_mode: text_max`` take the CPU-smoothed map's maximum (scaled to [0, 1]).
    """
    device = model_device(model)
    model.eval()
    text_max = model.cfg.score_mode == "text_max"
    arith = model.cfg.arithmetic
    top = map_range(arith.layer_fusion, len(model.cfg.clip.layers))
    if isinstance(model, HXPEModel):
        model.reset_rng()
    with naive_mode(model) as sigma, torch.no_grad():
        for batch in batches:
            phrases = phrases_from_batch(batch)
            refs, has_ref = batch.get("reference"), batch.get("has_reference")
            ids = _strings(batch, "image_id", len(phrases))
            cls = _strings(batch, "cls", len(phrases))
            labels = _labels(batch, len(phrases))
            for i in range(len(phrases)):
                out = model(
                    batch["image"][i : i + 1].to(device),
                    [phrases[i]],
                    **(_naive_options(batch, i) if isinstance(model, HXPEModel) else {}),
                    references=None if refs is None else refs[i : i + 1].to(device),
                    has_reference=None
                    if has_ref is None
                    else torch.as_tensor(has_ref)[i : i + 1].to(device),
                )
                amap = out.anomaly_map[0].cpu().numpy()
                if sigma > 0:
                    amap = gaussian_filter(amap, sigma=sigma)
                score = out.image_score.cpu().numpy().astype(np.float32)
                if text_max:  # the score uses the smoothed map's maximum
                    text_prob = out.image_logits.softmax(dim=-1)[:, 1].cpu().numpy()
                    score = (
                        ((text_prob + np.clip(amap.max() / top, 0, 1)) / 2.0)
                        .astype(np.float32)
                        .reshape(1)
                    )
                vfm = out.vfm_prompt.cpu().numpy() if out.vfm_prompt is not None else None
                yield BatchResult(
                    image_ids=ids[i : i + 1],
                    cls=cls[i : i + 1],
                    labels=labels[i : i + 1],
                    image_scores=score,
                    anomaly_maps=amap[None].astype(np.float32),
                    vfm_prompts=vfm,
                )


def collect(results: Iterable[BatchResult]) -> BatchResult:
    """Concatenate results (for tests and small runs; streaming callers should not)."""
    parts = list(results)
    if not parts:
        raise ValueError("no results to collect")
    vfm = [p.vfm_prompts for p in parts]
    return BatchResult(
        image_ids=[i for p in parts for i in p.image_ids],
        cls=[c for p in parts for c in p.cls],
        labels=np.concatenate([p.labels for p in parts]),
        image_scores=np.concatenate([p.image_scores for p in parts]),
        anomaly_maps=np.concatenate([p.anomaly_maps for p in parts]),
        vfm_prompts=None if any(v is None for v in vfm) else np.concatenate(vfm),
    )
