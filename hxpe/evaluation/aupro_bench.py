"""Benchmark: vectorised AUPRO against the per-threshold loop, on MVTec-class input.

``python -m hxpe.evaluation.aupro_bench [--n 100] [--size 518] [--out bench.json]``

The input is deterministic: ``n`` masks of ``size``×``size`` where every fourth image is normal and
the others carry 1-3 rotated ellipses (semi-axes 5-40 px), and smooth maps (Gaussian-smoothed noise
plus a bump on the defects, then σ = 4), as in AnomalyCLIP's own code measured on this
machine kind (README.md, "Time and performance"). Prints and
writes both times, the speed-up and both values (the anomalyclip convention; the exact one is timed
too).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from hxpe.atomic import write_text_atomic
from hxpe.evaluation.aupro_loop import aupro_anomalyclip_loop
from hxpe.evaluation.metrics import aupro, default_device

logger = logging.getLogger(__name__)


def synthetic_case(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``[n, size, size]`` (uint8) with elliptical regions and float32 maps that find them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    maps = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        if i % 4:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0.1 * size, 0.9 * size, 2)
                a, b = rng.uniform(5, 40, 2)
                t = rng.uniform(0, np.pi)
                u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
                v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
                masks[i][(u / a) ** 2 + (v / b) ** 2 <= 1] = 1
        noise = ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 8)
        maps[i] = ndimage.gaussian_filter(noise + 0.05 * masks[i], 4)
    return masks, maps


def _timed(fn, *args, **kwargs) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return float(value), time.perf_counter() - start


def run_bench(n: int = 100, size: int = 518, seed: int = 0) -> dict:
    """Time both implementations on one synthetic case; return the numbers."""
    masks, maps = synthetic_case(n, size, seed)
    device = default_device()
    aupro(masks[:2], maps[:2], "anomalyclip", device=device)  # warm-up (CUDA context, kernels)
    fast, t_fast = _timed(aupro, masks, maps, "anomalyclip", device=device)
    exact, t_exact = _timed(aupro, masks, maps, "exact", device=device)
    slow, t_slow = _timed(aupro_anomalyclip_loop, masks, maps, progress=True)
    return {
        "n_maps": n,
        "size": size,
        "n_regions": int(sum(ndimage.label(m, np.ones((3, 3)))[1] for m in masks)),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "vectorised_s": t_fast,
        "loop_s": t_slow,
        "speedup": t_slow / t_fast,
        "vectorised_value": fast,
        "loop_value": slow,
        "abs_diff": abs(fast - slow),
        "exact_convention_s": t_exact,
        "exact_convention_value": exact,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="number of maps")
    parser.add_argument("--size", type=int, default=518, help="map side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers to this JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_bench(args.n, args.size, args.seed)
    print(
        f"AUPRO (anomalyclip), {result['n_maps']} maps {args.size}x{args.size}, "
        f"{result['n_regions']} regions, device {result['device']}:\n"
        f"  vectorised {result['vectorised_s']:.2f} s  value {result['vectorised_value']:.6f}\n"
        f"  loop       {result['loop_s']:.2f} s  value {result['loop_value']:.6f}\n"
        f"  speed-up   {result['speedup']:.1f}x   |diff| {result['abs_diff']:.2e}\n"
        f"AUPRO (exact) {result['exact_convention_s']:.2f} s  "
        f"value {result['exact_convention_value']:.6f}"
    )
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
