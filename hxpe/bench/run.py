"""Benchmark: the fast inference path against the anchors' naive per-image loop, side by side.

The driver: which models and inputs are measured, with which settings, and the command line.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import torch

from hxpe.bench.inputs import dataset_for, demo_index
from hxpe.bench.measure import (
    Execution,
    measure_aupro,
    measure_eval,
    measure_phrases,
    measure_streaming,
    measure_train,
    profile_batch,
)
from hxpe.bench.report import to_markdown
from hxpe.config import Config, load_config
from hxpe.data.torch_dataset import IndexDataset
from hxpe.model.config import ModelConfig, TrainConfig
from hxpe.model.model import HXPEModel, assemble, build_paper_architecture_random
from hxpe.paths import repo_root
from hxpe.results_layout import bench_dir
from hxpe.versions import software_versions

log = logging.getLogger("hxpe.bench")
DEMO_PARAMS = repo_root() / "notebooks" / "params" / "demo.yaml"
PAPER_LABEL = "paper architecture, RANDOM WEIGHTS (ViT-L/14@336 at 518 px + DINOv2 ViT-S/14)"


def host_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count_logical": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        **software_versions(),
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


def _demo_config() -> Config:
    return load_config(DEMO_PARAMS)


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
    train_cfg: TrainConfig,
    execution: Execution,
    *,
    batch_size: int,
    n_naive: int,
    train_batch: int,
    train_steps: int,
    n_phrases: int,
    profile_images: int,
    warmup: bool,
    label: str,
) -> dict[str, Any]:
    precision = execution.precision
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
        model, eval_set, execution, batch_size=batch_size, n_naive=n_naive, warmup=warmup
    )
    section["phrases"] = measure_phrases(model, n_phrases, precision)
    section["train"] = (
        measure_train(
            model,
            train_set,
            train_cfg,
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
    execution = Execution(num_workers=workers, precision=args.precision, compile=args.compile)
    timings: dict[str, float] = {}
    report: dict[str, Any] = {
        "schema": 1,
        "command": "python -m hxpe.bench " + " ".join(args.argv),
        "quick": quick,
        "host": host_info(device),
        "settings": {"device": str(device), "batch_size": batch, **asdict(execution)},
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
        demo_cfg = _demo_config()
        n_demo = 8 if quick else (64 if gpu else 27)
        demo_eval = dataset_for(demo, 128, n_demo)
        variants = ["hxpe"] if quick else ["hxpe", "hxpe_anomalyclip"]
        for variant in variants:
            with _stage(f"demo/{variant}", timings):
                model = assemble(demo_cfg.model_for(variant)).to(device).eval()
                report["sections"][f"demo/{variant}"] = run_model_section(
                    model,
                    demo_eval,
                    demo_eval,
                    demo_cfg.train,
                    execution,
                    batch_size=min(batch, n_demo),
                    n_naive=n_demo,
                    train_batch=4,
                    train_steps=2 if quick else 5,
                    n_phrases=8 if quick else 32,
                    profile_images=min(batch, n_demo),
                    warmup=True,
                    label=f"demo profile variant {variant} (the small demo CLIP + DINOv2)",
                )
        with _stage("memory", timings):
            model = assemble(demo_cfg.model_for("hxpe")).to(device).eval()
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
                        TrainConfig(),
                        execution,
                        batch_size=min(batch, n_paper) if gpu else min(args.paper_batch, n_paper),
                        n_naive=args.paper_naive_images or (8 if gpu else 2),
                        train_batch=8 if gpu else 1,
                        train_steps=(3 if gpu else 1) if args.paper_train else 0,
                        n_phrases=64 if gpu else 2,
                        profile_images=batch if gpu else (1 if args.paper_profile else 0),
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m hxpe.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny config only, a few images")
    parser.add_argument("--out", type=Path, default=bench_dir())
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
    for noisy in ("hxpe.model.loading", "hxpe.model.model", "root", "hxpe.data.demo"):
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
