"""Inference over a dataset: the fast batched path and the naive per-image path it is measured against.

Both take an iterable of batches with explicit phrases (:class:`InferenceInputs`, e.g.
:class:`hxpe.data.torch_dataset.IndexBatch`, which the data package unpacks from the loader's
collated items with :func:`hxpe.data.torch_dataset.index_batches`) and yield one
:class:`BatchResult` per model call, so a caller can stream maps to disk and keep host memory flat
whatever the dataset size.

* :func:`infer_naive` mirrors the anchors' test loops (AnomalyCLIP/AdaCLIP ``test.py``): batch 1,
  fp32, no autograd graph but no inference mode, the text prompts encoded for every image over the full
  77-token context, no caches, the map copied to the CPU and smoothed there with
  :func:`scipy.ndimage.gaussian_filter` one image at a time. It calls the model's own forward with
  ``trim_text=False, sigma=0``.
* :func:`infer_fast`: whole batches; the prompts of the distinct phrases of a batch encoded once and
  kept in an LRU across batches (:class:`hxpe.model.explainable.PhraseCache`, emptied whenever a
  trainable parameter changes); the DINOv2 features of each distinct normal reference computed once
  (:class:`hxpe.model.dinov2_prompt.ReferenceCache`); both caches owned here (:class:`InferenceCaches`,
  one per call unless the caller passes its own) and passed to the model per call; the text tower
  run only up to the last EOT token; bf16 autocast on a GPU (the map head and the Gaussian stay
  float32); fused scaled-dot-product attention everywhere, the v-v path included; CLIP and DINOv2
  fed from the one resized batch; smoothing on the device; one device-to-host copy per batch;
  optional ``torch.compile``.

In float32 both paths give the same scores and maps (within 1e-3; ``tests/model/test_inference_paths.py``).

Example (the tiny model over the demo target's 8 test images; on a GPU, move the model there and
pass ``device="cuda"`` and ``num_workers`` to :func:`make_loader`):
    >>> from hxpe.data.index import load_index
    >>> from hxpe.data.torch_dataset import IndexDataset, index_batches
    >>> index = load_index(cfg.layout.index_dir("demo_target"))
    >>> loader = make_loader(IndexDataset(index, image_size=112), batch_size=4)
    >>> for res in infer_fast(tiny_model, index_batches(loader)):
    ...     print(len(res), res.anomaly_maps.shape, res.vfm_prompts.shape, res.image_ids[0])
    4 (4, 112, 112) (4, 8, 8) demo_target/bracket/test/...
    4 (4, 112, 112) (4, 8, 8) demo_target/gravel/test/...
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hxpe.config import Config
from hxpe.model.checkpoint import WEIGHTS_FILE, load_checkpoint
from hxpe.model.dinov2_prompt import ReferenceCache
from hxpe.model.explainable import PhraseCache
from hxpe.model.importers import released_model
from hxpe.model.loading import model_device
from hxpe.model.model import HXPEModel, build_model, map_range
from hxpe.results_layout import ResultsLayout
from hxpe.seeding import worker_init_fn

log = logging.getLogger(__name__)

Precision = str  # "fp32" | "bf16" | "auto" (bf16 on CUDA, fp32 elsewhere)


class InferenceInputs(Protocol):
    """What the inference paths read from one batch (the model package's side of the contract;
    :class:`hxpe.data.torch_dataset.IndexBatch` fulfils it)."""

    @property
    def images(self) -> torch.Tensor:  # [B, 3, H, W] in [0, 1]
        ...

    @property
    def phrases(self) -> Sequence[str | None]:  # the gated phrase per image, None for none
        ...

    @property
    def image_ids(self) -> Sequence[str]: ...

    @property
    def cls(self) -> Sequence[str]: ...

    @property
    def labels(self) -> torch.Tensor:  # [B] int64
        ...

    @property
    def references(self) -> torch.Tensor | None:  # [B, 3, H, W]
        ...

    @property
    def has_reference(self) -> torch.Tensor | None:  # [B] bool
        ...


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
    dataset: Dataset[Any],
    batch_size: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> DataLoader[Any]:
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


def _labels(batch: InferenceInputs) -> np.ndarray:
    return np.asarray(torch.as_tensor(batch.labels), dtype=np.int64).reshape(len(batch.images))


@dataclass
class InferenceCaches:
    """The caches of one inference run, owned by the caller; ``None`` = that cache is off."""

    phrases: PhraseCache | None = None
    references: ReferenceCache | None = None

    def forward_options(self) -> dict[str, PhraseCache | ReferenceCache | None]:
        """The keywords of :meth:`hxpe.model.model.HXPEModel.forward` that take the caches."""
        return {"phrase_cache": self.phrases, "reference_cache": self.references}

    def stats(self) -> dict[str, dict[str, int] | None]:
        """Hits and misses per cache (None for a cache that is off)."""
        return {
            "phrase_cache": _counts(self.phrases),
            "reference_cache": _counts(self.references),
        }


def _counts(cache: PhraseCache | ReferenceCache | None) -> dict[str, int] | None:
    return None if cache is None else {"hits": cache.hits, "misses": cache.misses}


def inference_caches(
    model: torch.nn.Module,
    *,
    phrases: bool = True,
    references: bool = True,
    phrase_maxsize: int = 4096,
    reference_maxsize: int = 32,
) -> InferenceCaches:
    """Fresh caches for ``model``'s fast path. The phrase cache is off (None) when the text prompts
    depend on the image (AdaCLIP dynamic prompts in the language branch: nothing to reuse), the
    reference cache when the model has no DINOv2 prompter; both for other models (WinCLIP)."""
    if not isinstance(model, HXPEModel):
        return InferenceCaches()
    phrase_cache = None
    if phrases and model.prompter.text_conditioned:
        log.info(
            "Text prompts of base %s depend on the image (dynamic language prompts): phrase "
            "embeddings are computed per image and not cached.",
            model.cfg.base,
        )
    elif phrases:
        phrase_cache = PhraseCache(phrase_maxsize)
    reference_cache = (
        ReferenceCache(reference_maxsize) if references and model.vfm is not None else None
    )
    return InferenceCaches(phrase_cache, reference_cache)


def maybe_compile(model: nn.Module, device: torch.device) -> bool:
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
    batches: Iterable[InferenceInputs],
    *,
    precision: Precision = "auto",
    compile: bool = False,
    caches: InferenceCaches | None = None,
    hsf_rng: Literal["per_image", "stream"] = "per_image",
) -> Iterator[BatchResult]:
    """The fast path: one model call per batch (see the module docstring).

    Args:
        precision: ``"auto"`` = bf16 autocast on CUDA, fp32 elsewhere; ``"fp32"``; ``"bf16"``.
        compile: ``torch.compile`` the backbones first (CUDA only; skipped with a log line on CPU).
        caches: the phrase and reference caches, kept across batches; None = fresh ones for this
            call (:func:`inference_caches`); pass one object to several calls to keep its entries
            across them, ``InferenceCaches()`` for none.
        hsf_rng: ``per_image`` (every image's HSF k-means from a fresh seeded RNG: one image, one
            score, whatever the batch) or ``stream`` (the authors' one RNG stream per pass).
    """
    device = model_device(model)
    model.eval()
    hxpe_model = isinstance(model, HXPEModel)  # other models with the same forward: no caches
    if caches is None:
        caches = inference_caches(model)
    if compile and hxpe_model:
        maybe_compile(model, device)
    if hxpe_model:
        model.reset_rng()
    bf16 = use_bf16(precision, device)
    per_image = hxpe_model and hsf_rng == "per_image"
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16),
        model.same_rng_per_image() if per_image else contextlib.nullcontext(),
    ):
        for batch in batches:
            images = batch.images.to(device, non_blocking=True)
            out = model(
                images,
                list(batch.phrases),
                references=_to(batch.references, device),
                has_reference=_to(batch.has_reference, device),
                **(
                    {"class_names": list(batch.cls), **caches.forward_options()}
                    if hxpe_model
                    else {}
                ),
            )
            host = [out.anomaly_map.float(), out.image_score.float()]
            if out.vfm_prompt is not None:
                host.append(out.vfm_prompt.float())
            host = [t.cpu() for t in host]  # one synchronisation per batch
            yield BatchResult(
                image_ids=list(batch.image_ids),
                cls=list(batch.cls),
                labels=_labels(batch),
                image_scores=host[1].numpy(),
                anomaly_maps=host[0].numpy(),
                vfm_prompts=host[2].numpy() if len(host) > 2 else None,
            )


def _naive_sigma(model: torch.nn.Module) -> float:
    """The σ the naive path applies on the CPU: the model's own (it runs with ``sigma=0``); other
    models (WinCLIP) have no smoothing to move: 0."""
    return model.cfg.sigma if isinstance(model, HXPEModel) else 0.0


def _naive_options(batch: InferenceInputs, i: int) -> dict[str, Any]:
    """HXPE forward options of the naive path for image ``i``: its class name, the full 77-token
    text context, no on-device smoothing, no caches (none is passed)."""
    return {"class_names": [str(batch.cls[i])], "trim_text": False, "sigma": 0.0}


def infer_naive(
    model: HXPEModel,
    batches: Iterable[InferenceInputs],
    hsf_rng: Literal["per_image", "stream"] = "per_image",
) -> Iterator[BatchResult]:
    """The anchors' per-image loop (see the module docstring); yields one result per image.

    Scores with ``score_mode: text_max`` take the CPU-smoothed map's maximum (scaled to [0, 1]).
    ``hsf_rng`` as :func:`infer_fast`'s.
    """
    device = model_device(model)
    model.eval()
    text_max = model.cfg.score_mode == "text_max"
    arith = model.cfg.arithmetic
    top = map_range(arith.layer_fusion, len(model.cfg.clip.layers))
    hxpe_model = isinstance(model, HXPEModel)
    if hxpe_model:
        model.reset_rng()
    sigma = _naive_sigma(model)
    per_image = hxpe_model and hsf_rng == "per_image"
    with torch.no_grad(), model.same_rng_per_image() if per_image else contextlib.nullcontext():
        for batch in batches:
            refs, has_ref = batch.references, batch.has_reference
            labels = _labels(batch)
            for i in range(len(batch.phrases)):
                out = model(
                    batch.images[i : i + 1].to(device),
                    [batch.phrases[i]],
                    **(_naive_options(batch, i) if hxpe_model else {}),
                    references=None if refs is None else refs[i : i + 1].to(device),
                    has_reference=None if has_ref is None else has_ref[i : i + 1].to(device),
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
                    image_ids=list(batch.image_ids[i : i + 1]),
                    cls=list(batch.cls[i : i + 1]),
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
    vfm = [p.vfm_prompts for p in parts if p.vfm_prompts is not None]
    return BatchResult(
        image_ids=[i for p in parts for i in p.image_ids],
        cls=[c for p in parts for c in p.cls],
        labels=np.concatenate([p.labels for p in parts]),
        image_scores=np.concatenate([p.image_scores for p in parts]),
        anomaly_maps=np.concatenate([p.anomaly_maps for p in parts]),
        vfm_prompts=np.concatenate(vfm) if len(vfm) == len(parts) else None,
    )


def model_for_evaluation(cfg: Config, direction: str, variant: str, results_dir: Path) -> nn.Module:
    """The model of ``variant`` for ``direction``: its checkpoint when it trains, built otherwise."""
    model_cfg = cfg.model_for(variant)
    if model_cfg.checkpoint is not None:
        return released_model(cfg, direction, variant, results_dir)
    if not model_cfg.trains:
        return build_model(model_cfg).eval()
    ckpt = ResultsLayout.at(results_dir).checkpoint_dir(direction, variant)
    if not (ckpt / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"No checkpoint for variant {variant!r}, direction {direction!r} in {ckpt}. Run stage "
            f"04 first (make train PROFILE={cfg.profile})."
        )
    model = load_checkpoint(ckpt)
    if model.cfg != model_cfg:
        log.warning(
            "Checkpoint %s was trained with a model config that differs from the profile's "
            "variant %r; using the checkpoint's.",
            ckpt,
            variant,
        )
    return model.eval()
