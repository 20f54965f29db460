"""Timers and memory meters of the benchmark: device sync, peak memory, per-submodule wall time."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from hxpe.model.model import HXPEModel


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


def to_mb(n: int | float) -> float:
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

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            sync(self.device)
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name: str) -> Callable[..., None]:
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
