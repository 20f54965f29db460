"""`make doctor` and the weights registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from hxpe.config import load_config
from hxpe.doctor import report, required_weight_keys, run_checks
from hxpe.paths import repo_root
from hxpe.weights import local_snapshot, registry, require_snapshot, weight_spec

PAPER = repo_root() / "notebooks" / "params" / "paper.yaml"


def test_registry_pins_every_model():
    reg = registry()
    assert {"clip", "dinov2", "vlm_awq", "vlm", "llm"} <= set(reg)
    assert reg["clip"].repo_id == "timm/vit_large_patch14_clip_336.openai"
    for key in ("clip", "dinov2", "vlm", "llm"):
        assert reg[key].revision and len(reg[key].revision) == 40


def test_paper_profile_needs_all_models_and_reports_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HXPE_DATA_ROOT", str(tmp_path / "no-data"))
    monkeypatch.setenv("HXPE_RELEASED_DIR", str(tmp_path / "no-released"))
    cfg = load_config(PAPER)
    keys = required_weight_keys(cfg)
    assert {"clip", "vlm_awq", "llm"} <= set(keys)
    text, ready = report(run_checks(cfg))
    assert not ready
    assert "make fetch-models MODELS=clip" in text
    assert "Qwen/Qwen2.5-7B-Instruct" in text
    assert "dataset mvtec" in text and "mvtec.com" in text
    assert "released released_adaclip (mvtec)" in text
    assert "make fetch-models MODELS=released_anomalyclip" in text
    assert "NOT READY" in text


def test_local_snapshot_finds_a_cached_revision(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    spec = weight_spec("dinov2")
    assert local_snapshot(spec) is None
    with pytest.raises(FileNotFoundError, match="make fetch-models MODELS=dinov2"):
        require_snapshot("dinov2")
    snap = tmp_path / "models--facebook--dinov2-small" / "snapshots" / spec.revision
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert local_snapshot(spec) is None  # no weight file yet
    (snap / "model.safetensors").write_bytes(b"x")
    assert local_snapshot(spec) == snap


def test_demo_profile_needs_no_pinned_weights():
    cfg = load_config(repo_root() / "notebooks" / "params" / "demo.yaml")
    assert required_weight_keys(cfg) == []
    text, ready = report(run_checks(cfg))
    assert ready, text


def test_awq_revision_is_the_fixed_head_and_the_paper_profile_uses_it():
    spec = weight_spec("vlm_awq")
    assert spec.revision == "712d5a5a210e7f0af603d2a949b577c68de2c6ef"
    assert not spec.revision.startswith("688e28d")  # its parent has a truncated first shard
    assert load_config(PAPER).agent.describe.revision == spec.revision


def test_clip_prefers_safetensors_over_the_pickle():
    assert weight_spec("clip").weight_patterns[0] == "open_clip_model.safetensors"


def _fake_hub(monkeypatch) -> list[tuple]:
    """Replace huggingface_hub.snapshot_download by a recorder (no network)."""
    calls: list[tuple] = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns, kwargs))
        return f"/hub/models--x/snapshots/{revision or 'resolved-main'}"

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return calls


def test_fetch_models_plans_only_the_paper_profiles_weights(monkeypatch, tmp_path, capsys):
    from hxpe.cli import main

    calls = _fake_hub(monkeypatch)
    released: list[str] = []
    monkeypatch.setattr(
        "hxpe.weights.fetch_released",
        lambda key: (released.append(key) or {"mvtec": "0" * 64}, []),
    )
    monkeypatch.setattr("hxpe.paths.repo_root", lambda: tmp_path)
    assert main(["fetch-models", "--params", str(PAPER)]) == 0
    reg = registry()
    assert [c[0] for c in calls] == [
        "timm/vit_large_patch14_clip_336.openai",
        "timm/vit_base_patch16_plus_clip_240.laion400m_e31",  # the WinCLIP row's backbone
        "facebook/dinov2-small",
        "Qwen/Qwen2-VL-72B-Instruct-AWQ",
        "Qwen/Qwen2.5-7B-Instruct",
    ]  # not the 147 GB bf16 Qwen2-VL-72B-Instruct
    assert released == ["released_anomalyclip", "released_adaclip"]  # the released_* rows
    for repo_id, revision, allow, extra in calls:
        spec = next(s for s in reg.values() if s.repo_id == repo_id)
        assert revision == spec.revision and allow == list(spec.allow_patterns) and extra == {}
    assert calls[0][2] == ["open_clip_model.safetensors", "open_clip_config.json"]
    assert "*.safetensors" in calls[3][2] and "*.json" in calls[3][2]
    out = capsys.readouterr().out
    assert "total ~" in out and "Qwen2-VL-72B-Instruct " not in out


def test_fetch_models_skips_drive_files_without_gdown_and_writes_the_lock(
    monkeypatch, tmp_path, capsys, caplog
):
    import hashlib
    import json

    from hxpe.cli import main
    from hxpe.weights import released_checkpoints

    calls = _fake_hub(monkeypatch)
    monkeypatch.setattr("hxpe.paths.repo_root", lambda: tmp_path)
    monkeypatch.setenv("HXPE_RELEASED_DIR", str(tmp_path / "released"))
    monkeypatch.setattr("hxpe.weights.gdown_available", lambda: False)
    served: list[str] = []

    def urlretrieve(url, target):  # GitHub raw files: the AnomalyCLIP checkpoints
        served.append(url)
        Path(target).write_bytes(url.encode())

    monkeypatch.setattr("urllib.request.urlretrieve", urlretrieve)
    assert main(["fetch-models", "--params", str(PAPER)]) == 0
    out = capsys.readouterr().out
    adaclip = released_checkpoints()["released_adaclip"]
    assert (
        "Google Drive files ['mvtec', 'visa']: gdown is not installed, they will be skipped" in out
    )
    for aux in ("mvtec", "visa"):
        url, target = adaclip.files[aux]["url"], adaclip.path(aux)
        assert (
            f"WARNING: released_adaclip ({aux}) is a Google Drive file and gdown is not installed: "
            f"skipped. Fetch it by hand: pip install gdown && gdown --fuzzy '{url}' -O '{target}'"
        ) in out
        assert not target.exists()
    lock = json.loads((tmp_path / "results" / "models.lock.json").read_text())
    assert "released_adaclip" not in lock and len(calls) == 5
    anomalyclip = released_checkpoints()["released_anomalyclip"]
    digests = {
        a: hashlib.sha256(f["url"].encode()).hexdigest() for a, f in anomalyclip.files.items()
    }
    assert lock["released_anomalyclip"] == ",".join(f"{a}:{d}" for a, d in sorted(digests.items()))
    assert lock["clip"] == registry()["clip"].revision

    # the doctor gives the same manual command for the skipped files
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    text, _ = report(run_checks(load_config(PAPER)))
    assert f"-> pip install gdown && gdown --fuzzy '{adaclip.files['mvtec']['url']}'" in text

    # a download that fails half-way leaves the lock with what was fetched before it
    (tmp_path / "results" / "models.lock.json").unlink()

    def failing(repo_id, revision=None, allow_patterns=None, **kwargs):
        if repo_id.startswith("Qwen/"):
            raise OSError("connection reset")
        return f"/hub/models--x/snapshots/{revision}"

    monkeypatch.setattr("huggingface_hub.snapshot_download", failing)
    caplog.clear()
    assert main(["fetch-models", "--params", str(PAPER)]) == 2  # one line, no traceback
    assert "connection reset" in caplog.text
    lock = json.loads((tmp_path / "results" / "models.lock.json").read_text())
    assert set(lock) == {"clip", "winclip_clip", "dinov2"}  # the Qwen downloads failed


def test_fetch_models_with_keys_and_dry_run(monkeypatch, capsys):
    from hxpe.cli import main

    calls = _fake_hub(monkeypatch)
    assert main(["fetch-models", "--dry-run", "vlm", "llm"]) == 0
    assert calls == []
    out = capsys.readouterr().out
    assert "Qwen/Qwen2-VL-72B-Instruct @ 2ac26c9" in out and "~147 GB" in out
    assert main(["fetch-models", "--params", "notebooks/params/demo.yaml"]) == 0
    assert calls == [] and "nothing to fetch" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("driver", "fix"),
    [
        ("570.86.15", "needs NVIDIA driver >= 580"),
        (None, "needs NVIDIA driver >= 580"),
        ("580.65.06", "CUDA_VISIBLE_DEVICES"),
    ],
)
def test_doctor_prints_the_driver_and_the_cuda_13_requirement(monkeypatch, driver, fix):
    import torch

    from hxpe.doctor import check_gpu

    monkeypatch.setattr("hxpe.doctor.nvidia_driver_version", lambda: driver)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check = check_gpu(need=True)
    assert not check.ok
    assert f"NVIDIA driver {driver or 'not found'}" in check.detail
    assert "torch built for CUDA 13.0 (needs driver >= 580)" in check.detail
    assert fix in check.fix
    text, _ = report([check])
    assert "driver >= 580" in text


def _fake_python(tmp_path, include) -> str:
    """An 'interpreter' that answers the include probe the way Python 3.11 would."""
    exe = tmp_path / "python"
    exe.write_text(f'#!/bin/sh\necho \'{{"include": "{include}", "version": "3.11"}}\'\n')
    exe.chmod(0o755)
    return str(exe)


def test_doctor_checks_a_c_compiler_and_python_h_for_triton(tmp_path, monkeypatch):
    from hxpe.doctor import check_build_tools

    include = tmp_path / "include" / "python3.11"
    include.mkdir(parents=True)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.delenv("CC", raising=False)
    venvs = {".venv-vllm": _fake_python(tmp_path, include)}
    text, ready = report(check_build_tools(True, venvs))
    assert not ready
    assert "[MISSING] C compiler (Triton): none (no gcc or clang on PATH)" in text
    assert "-> sudo apt-get install gcc" in text
    assert f"[MISSING] Python.h (.venv-vllm): {include}/Python.h (missing), Python 3.11" in text
    assert "-> sudo apt-get install python3.11-dev" in text
    text, ready = report(check_build_tools(False, venvs))  # a CPU profile: warnings only
    assert ready and "[   warn] C compiler (Triton)" in text

    cc = tmp_path / "bin" / "my-cc"
    cc.parent.mkdir()
    cc.write_text("#!/bin/sh\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    (include / "Python.h").write_text("/* headers */\n")
    text, ready = report(check_build_tools(True, venvs))
    assert ready, text
    assert f"[    ok ] C compiler (Triton): {cc}" in text
    monkeypatch.setenv("CC", "no-such-cc")
    assert "none ($CC=no-such-cc)" in report(check_build_tools(True, venvs))[0]


def test_the_include_probe_runs_in_the_real_interpreter():
    import sys
    import sysconfig

    from hxpe.doctor import python_include

    include, version = python_include(sys.executable)
    assert version == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert include == Path(sysconfig.get_paths()["include"])
