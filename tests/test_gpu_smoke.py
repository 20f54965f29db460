"""`make gpu-smoke` on this CPU machine: one clear failing line; its checks run on CPU stand-ins
(a stand-in vLLM module, the demo's tiny model) so that the GPU run has no untested code path."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest

from hxpe import gpu_smoke
from hxpe.paths import repo_root

from support.vllm_double import stand_in_vllm


def test_make_gpu_smoke_without_the_vllm_env_fails_with_one_line(tmp_path):
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(repo_root() / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(tmp_path), "gpu-smoke"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert done.stdout.splitlines() == [
        "gpu-smoke: FAIL: no vLLM environment (.venv-vllm/.installed missing): run `make gpu-env` "
        "on a CUDA machine first"
    ]


def test_module_without_vllm_fails_with_one_line():
    done = subprocess.run([sys.executable, "-m", "hxpe.gpu_smoke"], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr == ""
    (line,) = done.stdout.splitlines()
    assert line.startswith("gpu-smoke: FAIL: vLLM is not importable by ") and "make gpu-env" in line


def test_module_without_cuda_fails_with_one_line(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real(n, *a)
    )
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("hxpe.doctor.nvidia_driver_version", lambda: None)
    assert gpu_smoke.main([]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("gpu-smoke: FAIL: no CUDA device visible to torch ")
    assert "needs driver >= 580" in line or "CPU build" in line


def _in_process_stage(monkeypatch):
    from hxpe.cli import main

    vllm = stand_in_vllm('{"anomaly":false,"phrase":"a b"}')
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", vllm.sampling_params)

    def run(stage, params, env):
        assert env["HXPE_RESULTS_ROOT"]
        assert main([stage, "--params", str(params)]) == 0

    return vllm, run


def test_agent_checks_drive_both_stages_through_the_vllm_backend(monkeypatch, tmp_path):
    vllm, run = _in_process_stage(monkeypatch)
    rows = gpu_smoke.agent_checks(tmp_path, run_stage=run)
    assert [r.ok for r in rows] == [True, True], [r.detail for r in rows]
    inits = [c[1] for c in vllm.calls if c[0] == "init"]
    assert len(inits) == 2  # one engine per stage process, shared by both reference rules
    assert inits[0]["limit_mm_per_prompt"] == {"image": 2, "video": 0}
    assert inits[0]["model"].endswith("tiny-qwen2-vl") and inits[1]["model"].endswith("tiny-qwen2")
    assert inits[1]["structured_outputs_config"] == gpu_smoke.STRUCTURED
    generate = [c for c in vllm.calls if c[0] == "generate"]
    assert "json" in generate[-1][2].kwargs["structured_outputs"].kwargs
    assert "structured output on" in rows[1].detail and "2 reference rules" in rows[0].detail
    assert "0 raw output(s) with whitespace outside strings" in rows[1].detail
    assert rows[0].images_per_s is not None


def test_agent_checks_fail_on_whitespace_outside_strings(monkeypatch, tmp_path):
    _, run = _in_process_stage(monkeypatch)
    spaced = stand_in_vllm('{"anomaly": false}')  # what an unconstrained engine may write
    monkeypatch.setitem(sys.modules, "vllm", spaced)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", spaced.sampling_params)
    rows = gpu_smoke.agent_checks(tmp_path, run_stage=run)
    assert [r.ok for r in rows] == [True, False]
    assert rows[1].numbers["whitespace_outside_strings"] == rows[1].numbers["n"] > 0


# The paper-size checks (paper_checks) run on a small model on CPU, under CUDA autocast's dtype
# policy: tests/model/test_cuda_autocast_policy.py::test_gpu_smoke_model_paths_pass_under_the_policy.


def test_gpu_slug():
    assert gpu_smoke.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


@pytest.mark.parametrize("ok", [True, False])
def test_a_failing_check_is_reported_not_raised(ok):
    def check():
        if not ok:
            raise RuntimeError("boom")
        return True, "fine", {}

    row = gpu_smoke.timed("x", check)
    assert row.ok is ok and (row.detail == "fine" if ok else row.detail == "RuntimeError: boom")
