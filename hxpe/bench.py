"""Benchmark: the fast inference path against the anchors' naive per-image loop, side by side.

``python -m hxpe.bench [--quick] [--out results/bench] [--device auto|cpu|cuda] [--batch-size N]``
writes ``<out>/<host>.json`` and ``<out>/<host>.md``. Every figure is measured in the same run.

Sections, each fast vs naive (:mod:`hxpe.model.inference`):

* **demo**: the demo profile's tiny random-init models (variants ``hxpe`` = AdaCLIP base and
  ``hxpe_anomalyclip``) on generated demo images (128 px).
* **paper**: the paper-size architecture (ViT-L/14@336 CLIP at 518 px + DINOv2 ViT-S/14) with
  RANDOM WEIGHTS (:func:`hxpe.model.hxpe.build_paper_architecture_random`) on a handful of generated
  518 px images: compute and memory are those of the real model, outputs mean nothing.

Per model: evaluation images/s and peak memory (RSS on CPU, ``torch.cuda.max_memory_allocated`` on
GPU), the largest fast-vs-naive difference, seconds per training step, ms per distinct phrase encoded
(naive per image, fast uncached, fast cached), a per-stage time breakdown (CLIP vision, text, DINOv2,
maps/heads, smoothing) and the torch.profiler top operators of one fast batch. Then: peak host memory
while streaming maps to disk for two dataset sizes (against keeping them in RAM), and AUPRO time
(vectorised vs loop, from :mod:`hxpe.evaluation`, skipped with a note when absent).

On a GPU: ``python -m hxpe.bench --device cuda --batch-size 32`` (bf16 autocast on the fast path).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import gc
import json
import logging
import platform
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch
import torch.nn.functional as F

from hxpe.data.config import DemoDataConfig
from hxpe.data.index import NORMAL_TYPE, DatasetIndex, make_image_id, select_references
from hxpe.data.torch_dataset import IndexDataset, phrases_from_batch
from hxpe.model.config import ModelConfig, TrainConfig
from hxpe.model.hxpe import HXPEModel, build_model, build_paper_architecture_random
from hxpe.model.inference import (
    BatchResult,
    collect,
    disable_caches,
    infer_fast,
    infer_naive,
    make_loader,
    maybe_compile,
    model_device,
    naive_mode,
    phrase_cache_of,
    use_bf16,
)
from hxpe.model.losses import LossSpec, hxpe_loss
from hxpe.model.maps import gaussian_blur

log = logging.getLogger("hxpe.bench")
ROOT = Path(__file__).resolve().parents[1]
DEMO_PARAMS = ROOT / "notebooks" / "params" / "demo.yaml"
PAPER_LABEL = "paper architecture, RANDOM WEIGHTS (ViT-L/14@336 at 518 px + DINOv2 ViT-S/14)"


# --------------------------------------------------------------------------------------------------
# Measurement helpers
# --------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _read_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class PeakMemory:
    """Peak memory over a block: CUDA allocator peak on GPU, process RSS peak on CPU.

    RSS peak: the kernel's high-water mark reset through ``/proc/self/clear_refs`` when allowed,
    else a psutil sampler thread (every 5 ms).
    """

    device: torch.device
    peak_bytes: int = 0
    baseline_bytes: int = 0
    method: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        proc = psutil.Process()
        self.baseline_bytes = proc.memory_info().rss
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM (reset via /proc/self/clear_refs)"
        except OSError:
            self.method = "psutil RSS sampled every 5 ms"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            self.peak_bytes = _read_hwm() or 0
        else:
            self._stop.set()
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.baseline_bytes)


def _mb(n: int | float) -> float:
    return round(float(n) / 2**20, 1)


class StageTimer:
    """Wall time spent inside submodules (forward pre/post hooks; CUDA synchronised)."""

    def __init__(self, modules: dict[str, torch.nn.Module], device: torch.device) -> None:
        self.device = device
        self.totals = {name: 0.0 for name in modules}
        self._start: dict[str, float] = {}
        self._handles = []
        for name, mod in modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._pre(name)))
            self._handles.append(mod.register_forward_hook(self._post(name)))

    def _pre(self, name: str) -> Callable:
        def hook(*_: object) -> None:
            sync(self.device)
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name: str) -> Callable:
        def hook(*_: object) -> None:
            sync(self.device)
            self.totals[name] += time.perf_counter() - self._start.pop(name)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def stage_modules(model: HXPEModel) -> dict[str, torch.nn.Module]:
    mods: dict[str, torch.nn.Module] = {"clip_vision": model.visual, "text": model.text}
    if model.vfm is not None:
        mods["dinov2"] = model.vfm
    return mods


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def demo_index(
    root: Path, name: str, image_size: int, classes: list[str], **counts: int
) -> DatasetIndex:
    """Generate demo images (:mod:`hxpe.data.demo`) and index them (no hashing: not needed here)."""
    from hxpe.data.demo import DEFECTS_CSV, generate_demo_dataset

    cfg = DemoDataConfig(image_size=image_size, target_classes=classes, **counts)
    data = generate_demo_dataset(root / name, "target", cfg)
    table = pd.read_csv(data / DEFECTS_CSV, keep_default_na=False)
    rows = [
        {
            "image_id": make_image_id(name, r.cls, r.split, r.defect_type, r.image),
            "dataset": name,
            "cls": r.cls,
            "split": r.split,
            "label": int(r.defect_type != NORMAL_TYPE),
            "defect_type": r.defect_type,
            "image": r.image,
            "mask": r.mask,
            "sha256": "",
        }
        for r in table.itertuples()
    ]
    return DatasetIndex(name=name, root=data, frame=pd.DataFrame(rows), kind="demo")


def demo_phrases(index: DatasetIndex) -> dict[str, str | None]:
    """A gated phrase per anomalous image (repeated across images of a defect type), None else."""
    out: dict[str, str | None] = {}
    for r in index.frame.itertuples():
        if r.label:
            out[r.image_id] = f"a {r.defect_type.replace('_', ' ')} on the {r.cls} surface"
        else:
            out[r.image_id] = None
    return out


def repeated(index: DatasetIndex, split: str, n: int) -> DatasetIndex:
    """The ``split`` rows cycled to ``n`` rows with distinct image ids (for dataset-size scans)."""
    base = index.split(split).reset_index(drop=True)
    rows = []
    for i in range(n):
        r = base.iloc[i % len(base)].to_dict()
        r["image_id"] = f"{r['image_id']}#{i}"
        rows.append(r)
    train = index.split("train")
    frame = pd.concat([pd.DataFrame(rows), train], ignore_index=True)
    return DatasetIndex(name=index.name, root=index.root, frame=frame, kind=index.kind)


def dataset_for(
    index: DatasetIndex, size: int, n: int | None, references: bool = True
) -> IndexDataset:
    idx = index if n is None else repeated(index, "test", n)
    phrases = {k.split("#")[0]: v for k, v in demo_phrases(index).items()}
    phrases = {r.image_id: phrases.get(r.image_id.split("#")[0]) for r in idx.frame.itertuples()}
    refs = select_references(idx) if references else None
    return IndexDataset(idx, size, "test", phrases, refs)


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


def _drain(results: Iterable[BatchResult]) -> int:
    return sum(len(r) for r in results)


def measure_eval(
    model: HXPEModel,
    dataset: IndexDataset,
    *,
    batch_size: int,
    num_workers: int,
    n_naive: int,
    precision: str,
    compile: bool,
    warmup: bool,
) -> dict[str, Any]:
    """Images/s and peak memory of both paths on the same images, their largest difference and the
    fast path's per-stage times."""
    device = model_device(model)
    naive_set = torch.utils.data.Subset(dataset, range(min(n_naive, len(dataset))))
    fast_loader = make_loader(dataset, batch_size, num_workers, device)
    if compile:
        maybe_compile(model, device)
    if warmup:
        _drain(infer_naive(model, make_loader(torch.utils.data.Subset(dataset, [0]), 1)))
        first = torch.utils.data.Subset(dataset, range(min(batch_size, len(dataset))))
        _drain(infer_fast(model, make_loader(first, batch_size), precision=precision))
        # warm-up filled the caches; a timed run starts cold
        disable_caches(model)

    with PeakMemory(device) as mem_naive:
        sync(device)
        t0 = time.perf_counter()
        naive = collect(infer_naive(model, make_loader(naive_set, 1, 0, device)))
        sync(device)
        t_naive = time.perf_counter() - t0

    timer = StageTimer(stage_modules(model), device)
    smooth_s = 0.0
    with PeakMemory(device) as mem_fast:
        sync(device)
        t0 = time.perf_counter()
        parts = list(infer_fast(model, fast_loader, precision=precision, compile=compile))
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
            "peak_memory_mb": _mb(mem_naive.peak_bytes),
            "memory_method": mem_naive.method,
        },
        "fast": {
            "images": n_fast,
            "batch_size": batch_size,
            "num_workers": num_workers,
            "precision": "bf16" if use_bf16(precision, device) else "fp32",
            "seconds": t_fast,
            "images_per_s": n_fast / t_fast,
            "s_per_image": t_fast / n_fast,
            "peak_memory_mb": _mb(mem_fast.peak_bytes),
            "memory_method": mem_fast.method,
            "phrase_cache": None
            if (pc := phrase_cache_of(model)) is None
            else {"hits": pc.hits, "misses": pc.misses},
            "reference_cache": None
            if model.vfm is None or model.vfm.reference_cache is None
            else {
                "hits": model.vfm.reference_cache.hits,
                "misses": model.vfm.reference_cache.misses,
            },
        },
        "speedup": (n_fast / t_fast) / (n / t_naive),
        "max_abs_diff_map": diff_map,
        "max_abs_diff_score": diff_score,
        "stages_fast_s": stages,
        "stages_fast_share": {k: v / t_fast for k, v in stages.items()},
    }


def _train_batch(dataset: IndexDataset, n: int, device: torch.device) -> dict:
    items = [dataset[i % len(dataset)] for i in range(n)]
    batch = torch.utils.data.default_collate(items)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _train_steps(model: HXPEModel, batch: dict, steps: int, bf16: bool, trim: bool = True) -> float:
    """Seconds per optimiser step (forward, losses, backward, Adam) on ``batch``; ``trim``: the
    text tower up to the last EOT only (False = the full 77-token context, as the anchors)."""
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    spec = LossSpec.resolve(model.cfg, TrainConfig())
    model.train()
    phrases = phrases_from_batch(batch)
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(
                batch["image"],
                phrases,
                batch.get("reference"),
                batch.get("has_reference"),
                trim_text=trim,
            )
        losses = hxpe_loss(out, batch["mask"], batch["label"], spec)
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
    *,
    batch_size: int,
    steps: int,
    precision: str,
    warmup: bool,
) -> dict[str, Any] | None:
    """Seconds per training step: naive (batch 1, fp32, full text context) vs fast (batch
    ``batch_size``, trimmed text, bf16 autocast on GPU). The trainable state is restored after."""
    if not model.cfg.trains:
        return None
    device = model_device(model)
    saved = {k: v.detach().clone() for k, v in model.trainable_state().items()}
    bf16 = use_bf16(precision, device)
    one = _train_batch(dataset, 1, device)
    many = _train_batch(dataset, batch_size, device)
    try:
        with naive_mode(model):
            if warmup:
                _train_steps(model, one, 1, False, trim=False)
            with PeakMemory(device) as mem_naive:
                naive = _train_steps(model, one, steps, False, trim=False)
        if warmup:
            _train_steps(model, many, 1, bf16)
        with PeakMemory(device) as mem_fast:
            fast = _train_steps(model, many, steps, bf16)
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
            "peak_memory_mb": _mb(mem_naive.peak_bytes),
        },
        "fast": {
            "batch_size": batch_size,
            "precision": "bf16" if bf16 else "fp32",
            "s_per_step": fast,
            "s_per_image": fast / batch_size,
            "peak_memory_mb": _mb(mem_fast.peak_bytes),
        },
        "speedup_per_image": naive / (fast / batch_size),
    }


def measure_phrases(model: HXPEModel, n: int, precision: str) -> dict[str, Any]:
    """ms per distinct phrase encoded: naive (one text call per image, full 77-token context, no
    cache), fast uncached (one batched call, trimmed context), fast cached (a repeat call)."""
    from hxpe.model.inference import enable_phrase_cache

    device = model_device(model)
    bf16 = use_bf16(precision, device)
    words = ["scratch", "dent", "crack", "hole", "stain", "burr", "chip", "bend", "rust", "smear"]
    phrases = [f"a {words[i % 10]} number {i} near the {words[(i * 3) % 10]}" for i in range(n)]
    cond = None
    if model.prompter.text_conditioned:
        dim = model.visual.visual.proj.shape[1]
        cond = F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
        cond = cond.to(device)
    model.eval()

    def call(ps: list[str], c: torch.Tensor | None, trim: bool = True) -> None:
        model.text(ps, c, cache=phrase_cache_of(model), trim=trim)

    with torch.inference_mode():
        call(phrases[:2], None if cond is None else cond[:2])  # warm-up
        with naive_mode(model):
            sync(device)
            t0 = time.perf_counter()
            for i, p in enumerate(phrases):
                call([p], None if cond is None else cond[i : i + 1], trim=False)
            sync(device)
            naive = (time.perf_counter() - t0) / n
        cache = enable_phrase_cache(model)
        if cache is not None:
            cache.clear()
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
    """torch.profiler top operators (self CPU, and self CUDA on GPU) of one fast batch."""
    from torch.profiler import ProfilerActivity, profile

    device = model_device(model)
    subset = torch.utils.data.Subset(dataset, range(min(batch_size, len(dataset))))
    batches = list(make_loader(subset, batch_size))
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
                for res in infer_fast(model, make_loader(dataset, batch_size, 0, device)):
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
                    "peak_rss_mb": _mb(mem.peak_bytes),
                    "baseline_rss_mb": _mb(mem.baseline_bytes),
                    "growth_mb": _mb(mem.peak_bytes - mem.baseline_bytes),
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
    except ImportError:
        aupro_anomalyclip_loop = None
    device = default_device()
    out: dict[str, Any] = {"device": str(device), "cases": []}
    for n, size in cases:
        masks, maps = synthetic_case(n, size, seed=0)
        aupro(masks[:2], maps[:2], "anomalyclip", device=device)  # warm-up
        t0 = time.perf_counter()
        fast = aupro(masks, maps, "anomalyclip", device=device)
        sync(torch.device(device))
        t_fast = time.perf_counter() - t0
        row = {"n_maps": n, "size": size, "vectorised_s": t_fast, "vectorised_value": fast}
        if aupro_anomalyclip_loop is not None:
            t0 = time.perf_counter()
            slow = aupro_anomalyclip_loop(masks, maps)
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


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def host_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count_logical": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }
    try:
        from hxpe.provenance import git_state

        info["git"] = git_state()
    except Exception as err:  # provenance is informative only
        info["git"] = f"unavailable: {err}"
    return info


def _demo_model_cfg(variant: str) -> ModelConfig:
    from hxpe.config import load_config

    return load_config(DEMO_PARAMS).model_for(variant)


@contextmanager
def _stage(name: str, record: dict[str, float]) -> Any:
    print(f"[bench] {name} ...", flush=True)
    t0 = time.perf_counter()
    yield
    record[name] = round(time.perf_counter() - t0, 2)
    print(f"[bench] {name} done in {record[name]:.1f} s", flush=True)


def run_model_section(
    model: HXPEModel,
    eval_set: IndexDataset,
    train_set: IndexDataset,
    *,
    batch_size: int,
    n_naive: int,
    train_batch: int,
    train_steps: int,
    n_phrases: int,
    profile_images: int,
    num_workers: int,
    precision: str,
    compile: bool,
    warmup: bool,
    label: str,
) -> dict[str, Any]:
    n_params = sum(p.numel() for p in model.parameters())
    section: dict[str, Any] = {
        "label": label,
        "base": model.cfg.base,
        "image_size_input": eval_set.image_size,
        "clip_image_size": model.cfg.clip.image_size,
        "parameters_total": n_params,
        "parameters_trainable": sum(p.numel() for p in model.trainable_state().values()),
        "explain": model.cfg.explain.enabled,
        "vfm": model.cfg.vfm.enabled,
    }
    section["eval"] = measure_eval(
        model,
        eval_set,
        batch_size=batch_size,
        num_workers=num_workers,
        n_naive=n_naive,
        precision=precision,
        compile=compile,
        warmup=warmup,
    )
    section["phrases"] = measure_phrases(model, n_phrases, precision)
    section["train"] = (
        measure_train(
            model,
            train_set,
            batch_size=train_batch,
            steps=train_steps,
            precision=precision,
            warmup=warmup,
        )
        if train_steps > 0
        else None
    )
    section["profile_top_ops"] = (
        profile_batch(model, eval_set, profile_images, precision) if profile_images > 0 else None
    )
    return section


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    gpu = device.type == "cuda"
    quick = args.quick
    batch = args.batch_size or (32 if gpu else 8)
    workers = args.num_workers if args.num_workers is not None else (4 if gpu else 0)
    timings: dict[str, float] = {}
    report: dict[str, Any] = {
        "schema": 1,
        "command": "python -m hxpe.bench " + " ".join(args.argv),
        "quick": quick,
        "host": host_info(device),
        "settings": {
            "device": str(device),
            "batch_size": batch,
            "num_workers": workers,
            "precision": args.precision,
            "compile": args.compile,
        },
        "sections": {},
        "notes": [
            "naive = the anchors' loop: batch 1, fp32, text encoded per image over the full "
            "77-token context, no caches, map copied to the CPU and smoothed there with "
            "scipy.ndimage.gaussian_filter one image at a time.",
            "fast = hxpe.model.inference.infer_fast: batched, phrase and reference caches, "
            "text trimmed to the last EOT token, fused SDPA attention (v-v path included), "
            "on-device smoothing, bf16 autocast on CUDA, one host copy per batch.",
            "speed-ups are throughput ratios fast/naive measured in the same process.",
        ],
    }
    tmp = Path(tempfile.mkdtemp(prefix="hxpe-bench-"))
    try:
        demo = demo_index(tmp, "bench_demo", 128, ["gravel", "grass", "bracket"])
        n_demo = 8 if quick else (64 if gpu else 27)
        demo_eval = dataset_for(demo, 128, n_demo)
        variants = ["hxpe"] if quick else ["hxpe", "hxpe_anomalyclip"]
        for variant in variants:
            with _stage(f"demo/{variant}", timings):
                model = build_model(_demo_model_cfg(variant)).to(device).eval()
                report["sections"][f"demo/{variant}"] = run_model_section(
                    model,
                    demo_eval,
                    demo_eval,
                    batch_size=min(batch, n_demo),
                    n_naive=n_demo,
                    train_batch=4,
                    train_steps=2 if quick else 5,
                    n_phrases=8 if quick else 32,
                    profile_images=min(batch, n_demo),
                    num_workers=workers,
                    precision=args.precision,
                    compile=args.compile,
                    warmup=True,
                    label=f"demo profile variant {variant} (tiny random-init CLIP + DINOv2)",
                )
        with _stage("memory", timings):
            model = build_model(_demo_model_cfg("hxpe")).to(device).eval()
            sizes = [8, 24] if quick else [32, 128]
            report["memory"] = measure_streaming(
                model, demo, sizes, map_size=128 if quick else 518, batch_size=min(batch, 16)
            )
            del model
        if not quick and not args.no_paper:
            paper = demo_index(
                tmp,
                "bench_paper",
                518,
                ["gravel", "bracket"],
                n_train_good=1,
                n_test_good=2,
                n_test_per_defect=1,
            )
            n_paper = args.paper_images or (64 if gpu else 2)
            paper_eval = dataset_for(paper, 518, n_paper)
            for base in args.paper_bases:
                with _stage(f"paper/{base}", timings):
                    model = build_paper_architecture_random(ModelConfig(base=base))
                    model = model.to(device).eval()
                    report["sections"][f"paper/{base}"] = run_model_section(
                        model,
                        paper_eval,
                        paper_eval,
                        batch_size=min(batch, n_paper) if gpu else min(args.paper_batch, n_paper),
                        n_naive=args.paper_naive_images or (8 if gpu else 2),
                        train_batch=8 if gpu else 1,
                        train_steps=(3 if gpu else 1) if args.paper_train else 0,
                        n_phrases=64 if gpu else 2,
                        profile_images=batch if gpu else (1 if args.paper_profile else 0),
                        num_workers=workers,
                        precision=args.precision,
                        compile=args.compile,
                        warmup=gpu,
                        label=PAPER_LABEL + f", base {base}",
                    )
                    del model
                    gc.collect()
        with _stage("aupro", timings):
            cases = [(8, 64)] if quick else ([(32, 128), (16, 518)] if not gpu else [(100, 518)])
            report["aupro"] = measure_aupro(cases)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["stage_seconds"] = timings
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    return report


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def to_markdown(r: dict[str, Any]) -> str:
    h = r["host"]
    lines = [
        f"# hxpe benchmark: {h['host']}",
        "",
        f"`{r['command']}`, total {r['total_seconds']} s. "
        f"Device {h['device']} ({h['gpu'] or h['cpu']}), {h['cpu_count_logical']} logical CPUs, "
        f"torch {h['torch']}, {h['torch_threads']} threads, Python {h['python']}.",
        "",
        *[f"- {n}" for n in r["notes"]],
        "",
        "## Evaluation throughput (fast vs naive, same run)",
        "",
        "| section | naive img/s | fast img/s | speed-up | fast batch | precision | naive peak MB "
        "| fast peak MB | max abs diff map / score |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["sections"].items():
        e = s["eval"]
        lines.append(
            f"| {name} | {_f(e['naive']['images_per_s'], 3)} ({e['naive']['images']} img) "
            f"| {_f(e['fast']['images_per_s'], 3)} ({e['fast']['images']} img) "
            f"| **{_f(e['speedup'])}x** | {e['fast']['batch_size']} | {e['fast']['precision']} "
            f"| {_f(e['naive']['peak_memory_mb'])} | {_f(e['fast']['peak_memory_mb'])} "
            f"| {e['max_abs_diff_map']:.1e} / {e['max_abs_diff_score']:.1e} |"
        )
    lines += ["", "Labels:", ""]
    lines += [f"- {name}: {s['label']}" for name, s in r["sections"].items()]
    lines += [
        "",
        "## Where the time goes (fast path, per-stage wall time over the timed run)",
        "",
        "| section | "
        + " | ".join(["clip_vision", "text", "dinov2", "maps/heads/other", "smoothing alone"])
        + " |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in r["sections"].items():
        st, sh = s["eval"]["stages_fast_s"], s["eval"]["stages_fast_share"]
        cells = []
        for k in ("clip_vision", "text", "dinov2", "maps_heads_smoothing_other"):
            cells.append(f"{_f(st[k], 3)} s ({100 * sh[k]:.0f} %)" if k in st else "n/a")
        cells.append(f"{_f(st['of_which_smoothing_alone'], 4)} s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Training step (forward + losses + backward + Adam)",
        "",
        "| section | naive s/step (batch 1) | fast s/step | fast batch | fast s/image "
        "| speed-up per image |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in r["sections"].items():
        t = s.get("train")
        if t is None:
            lines.append(f"| {name} | not measured | | | | |")
            continue
        lines.append(
            f"| {name} | {_f(t['naive']['s_per_step'], 3)} | {_f(t['fast']['s_per_step'], 3)} "
            f"| {t['fast']['batch_size']} | {_f(t['fast']['s_per_image'], 3)} "
            f"| **{_f(t['speedup_per_image'])}x** |"
        )
    lines += [
        "",
        "## Text: cost per distinct phrase",
        "",
        "| section | image-conditioned text | sentences/prompt | naive ms/phrase "
        "| fast uncached ms/phrase | fast cached ms/phrase |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in r["sections"].items():
        p = s["phrases"]
        lines.append(
            f"| {name} | {p['text_conditioned_on_image']} | {p['sentences_per_prompt']} "
            f"| {_f(p['naive_ms_per_phrase'], 3)} | {_f(p['fast_uncached_ms_per_phrase'], 3)} "
            f"| {_f(p['fast_cached_ms_per_phrase'], 4)} |"
        )
    lines.append(
        "\nImage-conditioned text (AdaCLIP dynamic language prompts) cannot be cached: its cost "
        "is per image."
    )
    m = r.get("memory")
    if m:
        lines += [
            "",
            f"## Host memory while evaluating (tiny model, maps {m['map_size']} px, "
            f"batch {m['batch_size']})",
            "",
            "| images | mode | peak RSS MB | growth over start MB | files | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for run in m["runs"]:
            lines.append(
                f"| {run['n_images']} | {run['mode']} | {_f(run['peak_rss_mb'])} "
                f"| {_f(run['growth_mb'])} | {run['files_written']} | {_f(run['seconds'])} |"
            )
    a = r.get("aupro")
    if a:
        lines += ["", "## AUPRO (anomalyclip convention)", ""]
        if "skipped" in a:
            lines.append(a["skipped"])
        else:
            lines += [
                "| maps | size | vectorised s | loop s | speed-up | abs diff |",
                "|---|---|---|---|---|---|",
            ]
            for c in a["cases"]:
                lines.append(
                    f"| {c['n_maps']} | {c['size']} | {_f(c['vectorised_s'], 3)} "
                    f"| {_f(c.get('loop_s'), 2)} | {_f(c.get('speedup'))}x "
                    f"| {c.get('abs_diff', float('nan')):.1e} |"
                )
    lines += ["", "## Top operators of one fast batch (torch.profiler, self time)", ""]
    for name, s in r["sections"].items():
        ops = s.get("profile_top_ops")
        if not ops:
            continue
        lines += [f"### {name}", "", "| op | calls | self CPU ms | self CUDA ms | share |"]
        lines.append("|---|---|---|---|---|")
        for o in ops[:10]:
            lines.append(
                f"| `{o['op']}` | {o['calls']} | {_f(o['self_cpu_ms'])} "
                f"| {_f(o['self_cuda_ms'])} | {100 * o['share']:.1f} % |"
            )
        lines.append("")
    lines += ["", f"Stage wall times (s): {json.dumps(r['stage_seconds'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny config only, a few images")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None, help="fast path (8 CPU, 32 GPU)")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile (CUDA only)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper-size section")
    parser.add_argument("--paper-images", type=int, default=None, help="fast path (2 CPU, 64 GPU)")
    parser.add_argument("--paper-naive-images", type=int, default=None, help="(2 CPU, 8 GPU)")
    parser.add_argument("--paper-batch", type=int, default=2, help="CPU fast batch, paper size")
    parser.add_argument(
        "--paper-bases", nargs="+", default=["adaclip"], choices=["adaclip", "anomalyclip"]
    )
    parser.add_argument(
        "--paper-train",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time training steps at paper size",
    )
    parser.add_argument(
        "--paper-profile",
        action="store_true",
        help="torch.profiler on a paper-size batch on CPU too (always on GPU)",
    )
    parser.add_argument("--host", default=None, help="file name stem (default: hostname)")
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("hxpe.model.loading", "hxpe.model.hxpe", "root", "hxpe.data.demo"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.host or socket.gethostname()
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(report))
    log.info("wrote %s and %s", out / f"{stem}.json", out / f"{stem}.md")
    return report


if __name__ == "__main__":
    main()
