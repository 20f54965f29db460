"""Inference over a dataset: the fast batched path and the naive per-image path it is measured against.

Both take an iterable of batches as collated from :class:`hxpe.data.torch_dataset.IndexDataset`
(keys ``image``, ``phrase``, ``image_id``, ``cls``, ``label`` and optionally ``reference``,
``has_reference``) and yield one :class:`BatchResult` per model call, so a caller can stream maps to
disk and keep host memory flat whatever the dataset size.

* :func:`infer_naive` mirrors the anchors' test loops (AnomalyCLIP/AdaCLIP ``test.py``): batch 1,
  fp32, no autograd graph but no inference mode, the text prompts encoded for every image over the full
  77-token context, no caches, the map copied to the CPU and smoothed there with
  :func:`scipy.ndimage.gaussian_filter` one image at a time. It is built from the model's own
  modules; only the on-device smoothing is switched off for its call.
* :func:`infer_fast`: whole batches; the prompts of the distinct phrases of a batch encoded once and
  kept in an LRU across batches (:class:`hxpe.model.explain.PhraseCache`, emptied whenever a trainable
  parameter changes); the DINOv2 features of each distinct normal reference computed once
  (:class:`hxpe.model.vfm.ReferenceCache`); the text tower run only up to the last EOT token; bf16
  autocast on a GPU (the map head and the Gaussian stay float32); fused scaled-dot-product attention
  everywhere, the v-v path included; CLIP and DINOv2 fed from the one resized batch; smoothing on the
  device; one device-to-host copy per batch; optional ``torch.compile``.

In float32 both paths give the same scores and maps (within 1e-3; ``tests/test_inference_paths.py``).

Example:
    >>> loader = make_loader(dataset, batch_size=32, num_workers=4, device="cuda")  # doctest: +SKIP
    >>> for res in infer_fast(model, loader):  # doctest: +SKIP
    ...     save(res.image_ids, res.anomaly_maps)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader, Dataset

from hxpe.data.torch_dataset import phrases_from_batch
from hxpe.model.explain import PhraseCache
from hxpe.model.hxpe import HXPEModel
from hxpe.model.loading import model_device
from hxpe.model.vfm import ReferenceCache
from hxpe.seeding import worker_init_fn

log = logging.getLogger(__name__)

Precision = str  # "fp32" | "bf16" | "auto" (bf16 on CUDA, fp32 elsewhere)


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
    if model.text.phrase_cache is None:
        model.text.phrase_cache = PhraseCache(maxsize)
    return model.text.phrase_cache


def enable_reference_cache(model: HXPEModel, maxsize: int = 32) -> ReferenceCache | None:
    """Attach (or return) the cross-batch cache of the references' DINOv2 features."""
    if model.vfm is None:
        return None
    if model.vfm.reference_cache is None:
        model.vfm.reference_cache = ReferenceCache(maxsize)
    return model.vfm.reference_cache


def disable_caches(model: HXPEModel) -> None:
    """Detach the phrase and reference caches (the model's default state)."""
    model.text.phrase_cache = None
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
    if phrase_cache and hxpe_model:
        enable_phrase_cache(model)
    if reference_cache and hxpe_model:
        enable_reference_cache(model)
    if compile and hxpe_model:
        maybe_compile(model, device)
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
    """The model as the anchors run it: no caches, the full 77-token text context, and no on-device
    smoothing (yields the σ to apply on the CPU). Restores the model afterwards."""
    cfg, trim = model.cfg, model.text.encoder.trim_context
    caches = (model.text.phrase_cache, model.vfm.reference_cache if model.vfm else None)
    disable_caches(model)
    model.text.encoder.trim_context = False
    model.cfg = cfg.model_copy(update={"sigma": 0.0})
    try:
        yield cfg.sigma
    finally:
        model.cfg = cfg
        model.text.encoder.trim_context = trim
        model.text.phrase_cache = caches[0]
        if model.vfm is not None:
            model.vfm.reference_cache = caches[1]


def infer_naive(model: HXPEModel, batches: Iterable[dict]) -> Iterator[BatchResult]:
    """The anchors' per-image loop (see the module docstring); yields one result per image."""
    device = model_device(model)
    model.eval()
    text_max = model.cfg.score_mode == "text_max"
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
                        ((text_prob + np.clip(amap.max(), 0, 1)) / 2.0)
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
