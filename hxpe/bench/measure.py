"""The benchmark's measurements, each fast vs naive: evaluation, training step, phrases, profile,
streaming memory, AUPRO."""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hxpe.bench.inputs import dataset_for, model_batches
from hxpe.bench.timers import PeakMemory, StageTimer, stage_modules, sync, to_mb
from hxpe.data.index import DatasetIndex
from hxpe.data.torch_dataset import IndexDataset
from hxpe.model.config import TrainConfig
from hxpe.model.inference import (
    BatchResult,
    collect,
    infer_fast,
    infer_naive,
    inference_caches,
    make_loader,
    maybe_compile,
    use_bf16,
)
from hxpe.model.loading import model_device
from hxpe.model.losses import LossSpec
from hxpe.model.model import HXPEModel, gaussian_blur
from hxpe.train import make_optimizer, step_losses


@dataclass(frozen=True)
class Execution:
    """How the fast path runs in every section of a benchmark (the report's settings): DataLoader
    workers, precision (``auto``, ``fp32``, ``bf16``) and ``torch.compile``."""

    num_workers: int
    precision: str
    compile: bool


def _drain(results: Iterable[BatchResult]) -> int:
    return sum(len(r) for r in results)


def measure_eval(
    model: HXPEModel,
    dataset: IndexDataset,
    execution: Execution,
    *,
    batch_size: int,
    n_naive: int,
    warmup: bool,
) -> dict[str, Any]:
    """Images/s and peak memory of both paths on the same images, their largest difference and the
    fast path's per-stage times."""
    device = model_device(model)
    precision = execution.precision
    naive_set = torch.utils.data.Subset(dataset, range(min(n_naive, len(dataset))))
    fast_loader = model_batches(make_loader(dataset, batch_size, execution.num_workers, device))
    if execution.compile:
        maybe_compile(model, device)
    if warmup:
        one = torch.utils.data.Subset(dataset, [0])
        _drain(infer_naive(model, model_batches(make_loader(one, 1))))
        first = torch.utils.data.Subset(dataset, range(min(batch_size, len(dataset))))
        # the warm-up fills caches of its own; the timed run starts cold
        _drain(
            infer_fast(model, model_batches(make_loader(first, batch_size)), precision=precision)
        )

    with PeakMemory(device) as mem_naive:
        sync(device)
        t0 = time.perf_counter()
        naive = collect(infer_naive(model, model_batches(make_loader(naive_set, 1, 0, device))))
        sync(device)
        t_naive = time.perf_counter() - t0

    timer = StageTimer(stage_modules(model), device)
    smooth_s = 0.0
    caches = inference_caches(model)
    with PeakMemory(device) as mem_fast:
        sync(device)
        t0 = time.perf_counter()
        parts = list(
            infer_fast(
                model, fast_loader, precision=precision, compile=execution.compile, caches=caches
            )
        )
        sync(device)
        t_fast = time.perf_counter() - t0
    timer.remove()
    fast = collect(parts)
    n_fast = len(fast)
    # smoothing alone, on the device, for the same number of maps
    maps = torch.rand(min(batch_size, n_fast), *fast.anomaly_maps.shape[1:], device=device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(int(np.ceil(n_fast / maps.shape[0]))):
        gaussian_blur(maps, model.cfg.sigma)
    sync(device)
    smooth_s = time.perf_counter() - t0
    n = len(naive)
    diff_map = float(np.abs(fast.anomaly_maps[:n] - naive.anomaly_maps).max())
    diff_score = float(np.abs(fast.image_scores[:n] - naive.image_scores).max())
    stages = dict(timer.totals)
    stages["maps_heads_smoothing_other"] = max(0.0, t_fast - sum(stages.values()))
    stages["of_which_smoothing_alone"] = smooth_s
    return {
        "naive": {
            "images": n,
            "seconds": t_naive,
            "images_per_s": n / t_naive,
            "s_per_image": t_naive / n,
            "peak_memory_mb": to_mb(mem_naive.peak_bytes),
            "memory_method": mem_naive.method,
        },
        "fast": {
            "images": n_fast,
            "batch_size": batch_size,
            "num_workers": execution.num_workers,
            "precision": "bf16" if use_bf16(precision, device) else "fp32",
            "seconds": t_fast,
            "images_per_s": n_fast / t_fast,
            "s_per_image": t_fast / n_fast,
            "peak_memory_mb": to_mb(mem_fast.peak_bytes),
            "memory_method": mem_fast.method,
            **caches.stats(),  # phrase_cache, reference_cache: hits and misses, or None
        },
        "speedup": (n_fast / t_fast) / (n / t_naive),
        "max_abs_diff_map": diff_map,
        "max_abs_diff_score": diff_score,
        "stages_fast_s": stages,
        "stages_fast_share": {k: v / t_fast for k, v in stages.items()},
    }


def _train_batch(dataset: IndexDataset, n: int, device: torch.device) -> dict[str, Any]:
    items = [dataset[i % len(dataset)] for i in range(n)]
    batch = torch.utils.data.default_collate(items)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _train_steps(
    model: HXPEModel,
    batch: dict[str, Any],
    train_cfg: TrainConfig,
    steps: int,
    bf16: bool,
    trim: bool = True,
) -> float:
    """Seconds per optimiser step on ``batch``: the training code's own step (forward and losses,
    :func:`hxpe.train.step_losses`), backward, and its optimiser (:func:`hxpe.train.make_optimizer`).
    ``trim``: the text tower up to the last EOT only (False = the full 77-token context, as the
    anchors)."""
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, train_cfg, model.cfg)
    spec = LossSpec.resolve(model.cfg, train_cfg)
    model.train()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            losses = step_losses(model, batch, spec, trim_text=trim)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    model.eval()
    return float(np.median(times))


def measure_train(
    model: HXPEModel,
    dataset: IndexDataset,
    train_cfg: TrainConfig,
    *,
    batch_size: int,
    steps: int,
    precision: str,
    warmup: bool,
) -> dict[str, Any] | None:
    """Seconds per training step: naive (batch 1, fp32, full text context) vs fast (batch
    ``batch_size``, trimmed text, bf16 autocast on GPU), with ``train_cfg``'s optimiser and loss
    weights. The trainable state is restored after."""
    if not model.cfg.trains:
        return None
    device = model_device(model)
    saved = {k: v.detach().clone() for k, v in model.trainable_state().items()}
    bf16 = use_bf16(precision, device)
    one = _train_batch(dataset, 1, device)
    many = _train_batch(dataset, batch_size, device)
    try:
        if warmup:
            _train_steps(model, one, train_cfg, 1, False, trim=False)
        with PeakMemory(device) as mem_naive:
            naive = _train_steps(model, one, train_cfg, steps, False, trim=False)
        if warmup:
            _train_steps(model, many, train_cfg, 1, bf16)
        with PeakMemory(device) as mem_fast:
            fast = _train_steps(model, many, train_cfg, steps, bf16)
    finally:
        with torch.no_grad():
            for k, p in model.trainable_state().items():
                p.copy_(saved[k])
        model.eval()
    return {
        "steps_timed": steps,
        "naive": {
            "batch_size": 1,
            "s_per_step": naive,
            "s_per_image": naive,
            "peak_memory_mb": to_mb(mem_naive.peak_bytes),
        },
        "fast": {
            "batch_size": batch_size,
            "precision": "bf16" if bf16 else "fp32",
            "s_per_step": fast,
            "s_per_image": fast / batch_size,
            "peak_memory_mb": to_mb(mem_fast.peak_bytes),
        },
        "speedup_per_image": naive / (fast / batch_size),
    }


def measure_phrases(model: HXPEModel, n: int, precision: str) -> dict[str, Any]:
    """ms per distinct phrase encoded: naive (one text call per image, full 77-token context, no
    cache), fast uncached (one batched call, trimmed context), fast cached (a repeat call)."""
    device = model_device(model)
    bf16 = use_bf16(precision, device)
    words = ["scratch", "dent", "crack", "hole", "stain", "burr", "chip", "bend", "rust", "smear"]
    phrases = [f"a {words[i % 10]} number {i} near the {words[(i * 3) % 10]}" for i in range(n)]
    cond = None
    if model.prompter.text_conditioned:
        proj = model.visual.visual.proj
        if not isinstance(proj, torch.Tensor):
            raise TypeError(f"the CLIP vision tower has no projection matrix (proj is {proj!r})")
        dim = proj.shape[1]
        cond = F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
        cond = cond.to(device)
    model.eval()

    cache = inference_caches(model, references=False).phrases  # None for image-conditioned text

    def call(ps: list[str], c: torch.Tensor | None, trim: bool = True, cached: bool = True) -> None:
        model.text(ps, c, cache=cache if cached else None, trim=trim)

    with torch.inference_mode():
        call(phrases[:2], None if cond is None else cond[:2], cached=False)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for i, p in enumerate(phrases):
            call([p], None if cond is None else cond[i : i + 1], trim=False, cached=False)
        sync(device)
        naive = (time.perf_counter() - t0) / n
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            sync(device)
            t0 = time.perf_counter()
            call(phrases, cond)
            sync(device)
            uncached = (time.perf_counter() - t0) / n
            cached = None
            if cache is not None:
                t0 = time.perf_counter()
                call(phrases, cond)
                sync(device)
                cached = (time.perf_counter() - t0) / n
    return {
        "n_phrases": n,
        "text_conditioned_on_image": model.prompter.text_conditioned,
        "sentences_per_prompt": len(model.prompter.prompt_set.abnormal),
        "naive_ms_per_phrase": naive * 1e3,
        "fast_uncached_ms_per_phrase": uncached * 1e3,
        "fast_cached_ms_per_phrase": None if cached is None else cached * 1e3,
        "speedup_uncached": naive / uncached,
        "speedup_cached": None if cached is None else naive / cached,
    }


def profile_batch(
    model: HXPEModel, dataset: IndexDataset, batch_size: int, precision: str, top: int = 12
) -> list[dict[str, Any]]:
    """torch.profiler top operators (self CPU, and self CUDA on GPU) of one fast batch, its
    caches cold (the first batch of an evaluation)."""
    from torch.profiler import ProfilerActivity, profile

    device = model_device(model)
    subset = torch.utils.data.Subset(dataset, range(min(batch_size, len(dataset))))
    batches = list(model_batches(make_loader(subset, batch_size)))
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        _drain(infer_fast(model, batches, precision=precision))
    events = prof.key_averages()
    cuda = device.type == "cuda"

    def self_device(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)))

    key = self_device if cuda else (lambda e: float(e.self_cpu_time_total))
    total = sum(key(e) for e in events) or 1.0
    rows = []
    for e in sorted(events, key=key, reverse=True)[:top]:
        rows.append(
            {
                "op": e.key,
                "calls": int(e.count),
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "self_cuda_ms": self_device(e) / 1e3 if cuda else None,
                "share": key(e) / total,
            }
        )
    return rows


def measure_streaming(
    model: HXPEModel, index: DatasetIndex, sizes: list[int], map_size: int, batch_size: int
) -> dict[str, Any]:
    """Peak host memory of the fast path writing each map to disk (np.save float16 per image), for
    several dataset sizes, against keeping every float32 map in a list (the anchors' way)."""
    out: dict[str, Any] = {"map_size": map_size, "batch_size": batch_size, "runs": []}
    device = model_device(model)
    for n in sizes:
        dataset = dataset_for(index, map_size, n)
        modes = ["stream_to_disk"] + (["keep_in_ram"] if n == max(sizes) else [])
        for mode in modes:
            tmp = Path(tempfile.mkdtemp(prefix="hxpe-bench-maps-"))
            kept: list[np.ndarray] = []
            gc.collect()
            with PeakMemory(torch.device("cpu")) as mem:
                t0 = time.perf_counter()
                loader = model_batches(make_loader(dataset, batch_size, 0, device))
                for res in infer_fast(model, loader):
                    for image_id, amap in zip(res.image_ids, res.anomaly_maps, strict=True):
                        if mode == "stream_to_disk":
                            name = image_id.replace("/", "__").replace("#", "_")
                            np.save(tmp / f"{name}.npy", amap.astype(np.float16))
                        else:
                            kept.append(amap)
                seconds = time.perf_counter() - t0
            files = len(list(tmp.glob("*.npy")))
            shutil.rmtree(tmp, ignore_errors=True)
            out["runs"].append(
                {
                    "n_images": n,
                    "mode": mode,
                    "peak_rss_mb": to_mb(mem.peak_bytes),
                    "baseline_rss_mb": to_mb(mem.baseline_bytes),
                    "growth_mb": to_mb(mem.peak_bytes - mem.baseline_bytes),
                    "files_written": files,
                    "seconds": seconds,
                    "method": mem.method,
                }
            )
            del kept
    return out


def measure_aupro(cases: list[tuple[int, int]]) -> dict[str, Any]:
    """Vectorised AUPRO vs the per-threshold loop (hxpe.evaluation), when that package is present."""
    try:
        from hxpe.evaluation.aupro_bench import synthetic_case
        from hxpe.evaluation.metrics import aupro, default_device
    except ImportError as err:
        return {"skipped": f"hxpe.evaluation AUPRO not importable: {err}"}
    try:
        from hxpe.evaluation.aupro_loop import aupro_anomalyclip_loop

        loop: Callable[[np.ndarray, np.ndarray], float] | None = aupro_anomalyclip_loop
    except ImportError:
        loop = None
    device = default_device()
    out: dict[str, Any] = {"device": str(device), "cases": []}
    for n, size in cases:
        masks, maps = synthetic_case(n, size, seed=0)
        aupro(masks[:2], maps[:2], "anomalyclip", device=device)  # warm-up
        t0 = time.perf_counter()
        fast = aupro(masks, maps, "anomalyclip", device=device)
        sync(torch.device(device))
        t_fast = time.perf_counter() - t0
        row: dict[str, Any] = {
            "n_maps": n,
            "size": size,
            "vectorised_s": t_fast,
            "vectorised_value": fast,
        }
        if loop is not None:
            t0 = time.perf_counter()
            slow = loop(masks, maps)
            row |= {
                "loop_s": time.perf_counter() - t0,
                "loop_value": slow,
                "abs_diff": abs(fast - slow),
            }
            row["speedup"] = row["loop_s"] / t_fast
        else:
            row["loop_s"] = None
            row["note"] = "hxpe.evaluation.aupro_loop absent: loop reference not timed"
        out["cases"].append(row)
    return out
