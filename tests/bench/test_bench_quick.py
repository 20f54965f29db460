"""`python -m hxpe.bench --quick` writes the JSON and markdown summary with positive numbers."""

from __future__ import annotations

import json

from hxpe.bench.run import main
from hxpe.versions import software_versions


def test_quick_bench_writes_json_and_markdown(tmp_path) -> None:
    main(["--quick", "--out", str(tmp_path), "--host", "testhost"])
    report = json.loads((tmp_path / "testhost.json").read_text())
    md = (tmp_path / "testhost.md").read_text()
    assert {"host", "settings", "sections", "memory", "aupro", "total_seconds"} <= set(report)
    assert report["host"]["torch"] == software_versions()["torch"]
    assert report["host"]["torch_threads"] >= 1
    section = report["sections"]["demo/hxpe"]
    ev = section["eval"]
    for path in ("naive", "fast"):
        assert ev[path]["images"] > 0
        assert ev[path]["images_per_s"] > 0 and ev[path]["peak_memory_mb"] > 0
    assert ev["speedup"] > 0
    # one fast batch of the 8 quick images, all of class gravel: its reference's DINOv2 features
    # computed once (1 miss), none served across batches; AdaCLIP's image-conditioned text: no
    # phrase cache
    assert ev["fast"]["reference_cache"] == {"hits": 0, "misses": 1}
    assert ev["fast"]["phrase_cache"] is None
    assert ev["max_abs_diff_map"] < 1e-3 and ev["max_abs_diff_score"] < 1e-3
    assert ev["stages_fast_s"]["clip_vision"] > 0 and ev["stages_fast_s"]["text"] > 0
    assert section["train"]["naive"]["s_per_step"] > 0
    assert section["train"]["fast"]["s_per_step"] > 0
    assert section["phrases"]["naive_ms_per_phrase"] > 0
    assert section["phrases"]["fast_uncached_ms_per_phrase"] > 0
    assert section["profile_top_ops"] and section["profile_top_ops"][0]["self_cpu_ms"] > 0
    runs = report["memory"]["runs"]
    assert {r["n_images"] for r in runs} == {8, 24}
    assert all(r["peak_rss_mb"] > 0 for r in runs)
    assert all(r["files_written"] == r["n_images"] for r in runs if r["mode"] == "stream_to_disk")
    aupro = report["aupro"]
    assert "skipped" in aupro or aupro["cases"][0]["vectorised_s"] > 0
    for heading in ("Evaluation throughput", "Where the time goes", "Training step", "phrase"):
        assert heading in md
    assert "demo/hxpe" in md


def test_peak_memory_sees_an_allocation() -> None:
    """In a fresh process: a long-lived one (a pytest-xdist worker) may serve the 64 MiB from
    memory it already holds, which no RSS measure can see."""
    import subprocess
    import sys

    code = """
import numpy as np, torch
from hxpe.bench.timers import PeakMemory
with PeakMemory(torch.device("cpu")) as mem:
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    del block
print(mem.peak_bytes - mem.baseline_bytes)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) > 48 * 2**20


def test_bench_train_step_is_the_training_codes_step(tmp_path) -> None:
    """One timed bench step moves the prompts exactly as one step of hxpe.train (same optimiser,
    learning rate and loss weights)."""
    import copy

    import torch

    from hxpe.bench.inputs import dataset_for, demo_index
    from hxpe.bench.measure import _train_batch, _train_steps
    from hxpe.model.config import TrainConfig
    from hxpe.model.losses import LossSpec
    from hxpe.model.model import build_model
    from hxpe.model.tiny import tiny_model_config
    from hxpe.train import make_optimizer, step_losses

    index = demo_index(tmp_path, "bench_demo", 64, ["gravel"], n_train_good=1, n_test_good=1)
    batch = _train_batch(dataset_for(index, 64, None), 2, torch.device("cpu"))
    train_cfg = TrainConfig(lr=0.05, loss_weights={"focal": 2.0, "dice": 0.5, "image": 3.0})
    torch.manual_seed(0)
    bench_model = build_model(tiny_model_config("adaclip")).eval()
    train_model = copy.deepcopy(bench_model)
    initial = {k: v.detach().clone() for k, v in bench_model.trainable_state().items()}

    _train_steps(bench_model, batch, train_cfg, 1, False)

    train_model.train()
    params = [p for p in train_model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, train_cfg, train_model.cfg)
    step_losses(train_model, batch, LossSpec.resolve(train_model.cfg, train_cfg))[
        "total"
    ].backward()
    optimizer.step()

    moved = 0
    for (name, p), q in zip(
        bench_model.trainable_state().items(), train_model.trainable_state().values(), strict=True
    ):
        torch.testing.assert_close(p, q, msg=name)
        moved += int(not torch.equal(p, initial[name]))
    assert moved > 0
