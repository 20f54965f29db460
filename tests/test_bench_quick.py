"""`python -m hxpe.bench --quick` writes the JSON and markdown summary with positive numbers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json

from hxpe.bench import PeakMemory, main


def test_quick_bench_writes_json_and_markdown(tmp_path) -> None:
    main(["--quick", "--out", str(tmp_path), "--host", "testhost"])
    report = json.loads((tmp_path / "testhost.json").read_text())
    md = (tmp_path / "testhost.md").read_text()
    assert {"host", "settings", "sections", "memory", "aupro", "total_seconds"} <= set(report)
    assert report["host"]["torch"] and report["host"]["torch_threads"] >= 1
    section = report["sections"]["demo/hxpe"]
    ev = section["eval"]
    for path in ("naive", "fast"):
        assert ev[path]["images"] > 0
        assert ev[path]["images_per_s"] > 0 and ev[path]["peak_memory_mb"] > 0
    assert ev["speedup"] > 0
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
    import numpy as np
    import torch

    with PeakMemory(torch.device("cpu")) as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del block
    assert mem.peak_bytes - mem.baseline_bytes > 48 * 2**20
