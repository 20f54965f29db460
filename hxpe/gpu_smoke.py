"""``make gpu-smoke``: a five-minute check that the GPU path of ``make reproduce`` works, no downloads.

Run in the vLLM venv (``.venv-vllm/bin/python -m hxpe.gpu_smoke``), on one CUDA GPU:

1. **agent**: the tiny random Qwen2-VL and Qwen2 folders of the dry run (head size 64, so every vLLM
   attention backend takes them) and a few MVTec-layout fixture images; stage 01 indexes them, then
   stages 02 and 03 run through the real vLLM backend (``hxpe describe`` / ``hxpe extract``, each in
   its own process, for two reference rules, with one engine per process; structured JSON output on
   with an explicit backend). Passes when every image has a description and every description an
   extraction record under both rules (random models rarely produce a valid extraction; failures are
   recorded, which is the path being exercised), the extraction records carry the engine-level
   structured-output settings, and no raw output has whitespace outside its JSON strings.
2. **inference**: the paper-size architecture (ViT-L/14@336 at 518 px + DINOv2 ViT-S/14, RANDOM
   weights) through ``infer_fast`` in bf16 at batch 32; passes when every map is finite.
3. **training**: one optimiser step of that model in bf16 (batch 8); passes when the loss is finite
   and the trainable parameters moved.

Prints a pass/fail table with img/s and writes ``results/bench/<gpu>-smoke.json``. Without CUDA or
without vLLM it prints one line saying which and exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SMOKE_IMAGE_SIZE = 518
# what the extraction records must say of vLLM's engine-level structured-output settings
STRUCTURED = {"backend": "guidance", "disable_any_whitespace": True}
BATCH = 32
TRAIN_BATCH = 8


@dataclass
class SmokeResult:
    """One row of the table."""

    check: str
    ok: bool
    seconds: float
    detail: str = ""
    images_per_s: float | None = None
    numbers: dict[str, Any] = field(default_factory=dict)


def preflight() -> str | None:
    """Why this interpreter cannot run the smoke test (one line), or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return (
            f"gpu-smoke: FAIL: vLLM is not importable by {sys.executable}; run `make gpu-env` on a "
            f"CUDA machine, then `make gpu-smoke`"
        )
    import torch

    if not torch.cuda.is_available():
        from hxpe.doctor import driver_line, nvidia_driver_version

        drivers, _ = driver_line(nvidia_driver_version(), torch.version.cuda)
        return f"gpu-smoke: FAIL: no CUDA device visible to torch {torch.__version__} ({drivers})"
    return None


def timed(check: str, fn: Callable[[], tuple[bool, str, dict[str, Any]]]) -> SmokeResult:
    """Run one check; an exception is a failure with its message, never a crash of the whole run."""
    t0 = time.perf_counter()
    try:
        ok, detail, numbers = fn()
    except Exception as err:  # a smoke test reports every failure and goes on
        ok, detail, numbers = False, f"{type(err).__name__}: {err}"[:300], {}
    return SmokeResult(check, ok, time.perf_counter() - t0, detail, None, numbers)


# -------------------------------------------------------------------------------------- agent


def write_agent_inputs(work: Path) -> Path:
    """Fixture images (MVTec layout, 2 classes), the tiny Qwen folders and the params file."""
    import yaml

    from hxpe.agent.tiny_models import save_tiny_qwen2, save_tiny_qwen2_vl
    from hxpe.data.config import DemoDataConfig
    from hxpe.data.demo import generate_demo_dataset
    from hxpe.data.fixtures import write_raw_fixture

    demo = generate_demo_dataset(work / "demo", "aux", DemoDataConfig(image_size=128))
    classes = write_raw_fixture("mvtec", work / "raw" / "mvtec", demo, n_classes=2)
    vlm = save_tiny_qwen2_vl(work / "models" / "tiny-qwen2-vl", hidden=128, stop_every=3)
    llm = save_tiny_qwen2(work / "models" / "tiny-qwen2", hidden=128)
    engine = {"max_model_len": 2048, "gpu_memory_utilization": 0.3, "enforce_eager": True}
    params = {
        "profile": "gpu-smoke",
        "description": "make gpu-smoke: tiny random Qwen models on vLLM, fixture images",
        "deterministic": False,
        # two reference rules: both run in one `hxpe describe` (and `extract`) process, one engine
        "variants": {"hxpe": {}, "hxpe_noref": {"reference_rule": "none"}},
        "data": {
            "allow_count_mismatch": True,
            "datasets": [
                {
                    "name": "mvtec",
                    "kind": "mvtec",
                    "root": str(work / "raw" / "mvtec"),
                    "options": {"classes": classes},
                }
            ],
        },
        "agent": {
            "describe": {
                "backend": "vllm",
                "model_id": str(vlm),
                "max_new_tokens": 32,
                "max_retries": 0,
                # <= 256 visual tokens per image: two images and the prompt fit the tiny model's
                # 2048 positions, also in vLLM's memory profile with dummy images of max_pixels
                "options": {
                    **engine,
                    "mm_processor_kwargs": {"min_pixels": 4 * 28 * 28, "max_pixels": 256 * 28 * 28},
                },
            },
            "extract": {
                "backend": "vllm",
                "model_id": str(llm),
                "max_new_tokens": 64,
                "max_retries": 0,
                "options": engine,
            },
        },
    }
    path = work / "gpu-smoke.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_agent_stage(stage: str, params: Path, env: dict[str, str]) -> None:
    """``hxpe <stage> --params`` in its own process (vLLM frees GPU memory only at process exit)."""
    done = subprocess.run(
        [sys.executable, "-m", "hxpe.cli", stage, "--params", str(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"hxpe {stage} exited {done.returncode}: {tail}")


def agent_checks(
    work: Path, run_stage: Callable[[str, Path, dict[str, str]], None] = run_agent_stage
) -> list[SmokeResult]:
    """Stage 01 in process, then stages 02 and 03 through vLLM, each in its own process
    (``run_stage``; tests pass one that runs the stage in process against a stand-in vLLM)."""
    from hxpe.config import load_config
    from hxpe.data.prepare import prepare_all

    params = write_agent_inputs(work)
    env = {**os.environ, "HXPE_RESULTS_ROOT": str(work / "results"), "HF_HUB_OFFLINE": "1"}
    os.environ["HXPE_RESULTS_ROOT"] = env["HXPE_RESULTS_ROOT"]
    cfg = load_config(params)
    n_images = sum(len(ix.split("test")) for ix in prepare_all(cfg).values())
    caches = [cfg.layout.agent_caches(rule) for rule in cfg.reference_rules()]
    expected = n_images * len(caches)

    def describe() -> tuple[bool, str, dict[str, Any]]:
        run_stage("describe", params, env)
        recs = [r for d, _ in caches for r in _records(d)]
        engine = recs[0]["provenance"]["engine"] if recs else {}
        ok = len(recs) == expected
        detail = f"{len(recs)}/{expected} descriptions ({len(caches)} reference rules); engine key {engine}"
        return ok, detail, {"n": len(recs)}

    def extract() -> tuple[bool, str, dict[str, Any]]:
        run_stage("extract", params, env)
        recs = [r for _, e in caches for r in _records(e)]
        valid = sum(1 for r in recs if not r.get("error"))
        engines = [r["provenance"]["engine"].get("structured_output") for r in recs]
        structured = bool(recs) and all(e == STRUCTURED for e in engines)
        spaced = sum(1 for r in recs if whitespace_outside_strings(r.get("raw") or ""))
        ok = len(recs) == expected and structured and spaced == 0
        detail = (
            f"{len(recs)}/{expected} extraction records ({valid} valid JSON from a random model), "
            f"structured output {'on' if structured else 'MISSING'} {engines[0] if recs else ''}, "
            f"{spaced} raw output(s) with whitespace outside strings"
        )
        return ok, detail, {"n": len(recs), "valid": valid, "whitespace_outside_strings": spaced}

    rows = [timed("stage 02 describe (vLLM, 2 images/prompt)", describe)]
    rows[0].images_per_s = _rate(expected, rows[0])
    rows.append(timed("stage 03 extract (vLLM, JSON schema)", extract))
    rows[1].images_per_s = _rate(expected, rows[1])
    return rows


def whitespace_outside_strings(text: str) -> int:
    r"""How many whitespace characters of ``text`` (JSON, possibly cut off at ``max_tokens``) lie
    outside its string literals: 0 when compact JSON was enforced.

    >>> whitespace_outside_strings('{"a":"b c","d":[1,2]}')
    0
    >>> whitespace_outside_strings('{"a": "b \\" c",\n "d":1')
    3
    """
    count, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch.isspace():
            count += 1
    return count


def _rate(n: int, row: SmokeResult) -> float | None:
    return round(n / row.seconds, 2) if row.ok and row.seconds > 0 else None


# ----------------------------------------------------------------------------- paper-size model


def paper_checks(
    work: Path,
    model: Any,
    *,
    image_size: int = SMOKE_IMAGE_SIZE,
    batch: int = BATCH,
    train_batch: int = TRAIN_BATCH,
) -> list[SmokeResult]:
    """infer_fast in bf16 at ``batch`` (two batches timed after a warm-up batch) and one bf16
    training step of ``model`` (the paper-size architecture in ``main``), on the model's device."""
    import numpy as np
    import torch

    from hxpe.bench.inputs import dataset_for, demo_index, model_batches
    from hxpe.bench.timers import PeakMemory, sync
    from hxpe.model.config import TrainConfig
    from hxpe.model.inference import infer_fast, inference_caches, make_loader
    from hxpe.model.loading import model_device
    from hxpe.model.losses import LossSpec
    from hxpe.train import make_optimizer, step_losses

    device = model_device(model)
    index = demo_index(work, "smoke_paper", image_size, ["gravel", "bracket"],
                       n_train_good=1, n_test_good=2, n_test_per_defect=1)  # fmt: skip
    data = dataset_for(index, image_size, 2 * batch)
    workers = 4 if device.type == "cuda" else 0

    def inference() -> tuple[bool, str, dict[str, Any]]:
        warm = torch.utils.data.Subset(data, range(batch))
        caches = inference_caches(model)  # the warm-up's entries serve the timed run
        warm_batches = model_batches(make_loader(warm, batch, workers, device))
        for _ in infer_fast(model, warm_batches, precision="bf16", caches=caches):
            pass
        with PeakMemory(device) as mem:
            sync(device)
            t0 = time.perf_counter()
            loader = model_batches(make_loader(data, batch, workers, device))
            results = list(infer_fast(model, loader, precision="bf16", caches=caches))
            sync(device)
            seconds = time.perf_counter() - t0
        n = sum(len(r) for r in results)
        finite = all(bool(np.isfinite(r.anomaly_maps).all()) for r in results)
        rate = n / seconds
        numbers = {
            "images": n,
            "seconds": round(seconds, 3),
            "images_per_s": round(rate, 2),
            "peak_memory_mb": round(mem.peak_bytes / 2**20) if mem.peak_bytes else None,
        }
        return finite and n == len(data), f"{n} images, maps finite: {finite}", numbers

    def train_step() -> tuple[bool, str, dict[str, Any]]:
        items = [data[i] for i in range(train_batch)]
        batch = torch.utils.data.default_collate(items)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        params = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        train_cfg = TrainConfig()  # the paper's settings; the base's optimiser and loss weights
        opt = make_optimizer(params, train_cfg, model.cfg)
        model.train()
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = step_losses(model, batch, LossSpec.resolve(model.cfg, train_cfg))
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        opt.step()
        sync(device)
        seconds = time.perf_counter() - t0
        model.eval()
        moved = any(not torch.equal(a, p.detach()) for a, p in zip(before, params, strict=True))
        value = float(loss["total"].detach())
        ok = moved and bool(torch.isfinite(loss["total"]).item())
        numbers = {"loss": value, "seconds": round(seconds, 3), "batch_size": train_batch}
        return ok, f"loss {value:.4f}, parameters moved: {moved}", numbers

    rows = [timed(f"paper-size infer_fast bf16, batch {batch}", inference)]
    rows[0].images_per_s = rows[0].numbers.get("images_per_s")
    rows.append(timed(f"paper-size train step bf16, batch {train_batch}", train_step))
    if rows[1].ok:
        rows[1].images_per_s = round(train_batch / rows[1].numbers["seconds"], 2)
    return rows


# ------------------------------------------------------------------------------------- report


def gpu_slug(name: str) -> str:
    """A file-name-safe GPU name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def table(rows: list[SmokeResult]) -> str:
    lines = [f"{'check':46s} {'result':6s} {'s':>7s} {'img/s':>8s}  detail"]
    for r in rows:
        rate = f"{r.images_per_s:8.1f}" if r.images_per_s is not None else f"{'-':>8s}"
        mark = "PASS" if r.ok else "FAIL"
        lines.append(f"{r.check:46s} {mark:6s} {r.seconds:7.1f} {rate}  {r.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hxpe.results_layout import bench_dir

    parser = argparse.ArgumentParser(
        prog="python -m hxpe.gpu_smoke",
        description="Five-minute GPU check (run by `make gpu-smoke` in .venv-vllm): vLLM stages "
        "02-03 on tiny random Qwen models, the paper-size architecture in bf16 at batch 32 and one "
        "training step. Writes results/bench/<gpu>-smoke.json.",
    )
    parser.add_argument("--out", default=bench_dir(), help="Folder of the JSON report.")
    parser.add_argument("--skip-agent", action="store_true", help="Only the paper-size checks.")
    args = parser.parse_args(argv)
    reason = preflight()
    if reason:
        print(reason)
        return 1
    import torch
    import vllm

    from hxpe.model.config import ModelConfig
    from hxpe.model.model import build_paper_architecture_random
    from hxpe.paths import resolve
    from hxpe.versions import software_versions

    gpu = torch.cuda.get_device_name(0)
    print(f"gpu-smoke on {gpu}: torch {torch.__version__}, vLLM {vllm.__version__}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hxpe-gpu-smoke-") as tmp:
        work = Path(tmp)
        rows = [] if args.skip_agent else agent_checks(work / "agent")
        model = build_paper_architecture_random(ModelConfig(base="adaclip")).to("cuda").eval()
        rows += paper_checks(work / "paper", model)
    total = round(time.perf_counter() - start, 1)
    print(table(rows))
    passed = all(r.ok for r in rows)
    print(f"gpu-smoke: {'PASS' if passed else 'FAIL'} in {total:.0f} s")
    out = resolve(args.out) / f"{gpu_slug(gpu)}-smoke.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "software": software_versions(),
        "passed": passed,
        "total_seconds": total,
        "checks": [asdict(r) for r in rows],
    }
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
