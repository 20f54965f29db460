"""The run manifest ``results/<profile>/provenance.json``: what made every artifact.

It records the git commit (and whether the tree was dirty), Python and package versions, hardware,
the params file and its hash, seeds, model ids/revisions/weight hashes, dataset index hashes, and per
stage its start/end times and the SHA-256 of each file it wrote. ``hxpe verify`` (``make verify``)
recomputes those hashes and reports drift.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hxpe.atomic import write_json_atomic
from hxpe.hashing import file_sha256
from hxpe.paths import repo_root
from hxpe.results_layout import ResultsLayout
from hxpe.versions import software_versions


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_state() -> dict[str, Any]:
    """Commit SHA and dirtiness of the checkout (``None`` outside a git checkout)."""
    root = repo_root()

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def hardware() -> dict[str, Any]:
    """CPU, memory, and GPU/driver/CUDA when present."""
    import psutil
    import torch

    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def hash_tree(paths: list[Path], base: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (files or directories), keyed by path relative to base."""
    out: dict[str, str] = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            if f.name.endswith(".tmp") or "/." in f.as_posix():
                continue
            out[f.relative_to(base).as_posix()] = file_sha256(f)
    return out


def read_manifest(results_dir: Path) -> dict[str, Any]:
    path = ResultsLayout.at(results_dir).manifest
    return json.loads(path.read_text()) if path.is_file() else {}


def model_provenance(keys: list[str]) -> dict[str, Any]:
    """Ids, revisions and weight-file hashes of the pinned models this run uses.

    Weight hashes come from the HF cache's blob names (the LFS SHA-256), so nothing large is re-read.
    """
    from hxpe.weights import local_snapshot, weight_spec

    out: dict[str, Any] = {}
    for key in keys:
        spec = weight_spec(key)
        snap = local_snapshot(spec)
        files = {}
        if snap is not None:
            for f in sorted(snap.iterdir()):
                target = f.resolve()
                files[f.name] = target.name if target.parent.name == "blobs" else None
        out[key] = {
            "repo_id": spec.repo_id,
            "revision": spec.revision,
            "snapshot": str(snap) if snap else None,
            "files": files,
        }
    return out


def dataset_provenance(results_dir: Path) -> dict[str, Any]:
    """Root, size and index hash of every dataset indexed under ``results_dir/index``."""
    out: dict[str, Any] = {}
    for info_file in ResultsLayout.at(results_dir).dataset_infos():
        info = json.loads(info_file.read_text())
        out[info["name"]] = {
            k: info.get(k) for k in ("kind", "root", "n_images", "n_anomalous", "index_sha256")
        }
    return out


def record_stage(
    results_dir: Path,
    stage: str,
    *,
    params_file: Path,
    started: str,
    finished: str,
    outputs: list[Path],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add (or replace) one stage's entry in the manifest, hashing the files it wrote."""
    from hxpe.config import load_config

    manifest = read_manifest(results_dir)
    cfg = load_config(params_file)
    manifest.update(
        {
            "profile": cfg.profile,
            "params_file": os.path.relpath(params_file, repo_root()),
            "params_sha256": file_sha256(params_file),
            "seed": cfg.seed,
            "deterministic": cfg.deterministic,
            "python": platform.python_version(),
            "packages": software_versions(),
            "hardware": hardware(),
        }
    )
    from hxpe.doctor import required_weight_keys

    manifest["models"] = {
        **model_provenance(required_weight_keys(cfg)),
        **cfg.random_init_backbones(),
    }
    manifest["agent_models"] = {
        stage: {"backend": c.backend, "model_id": c.model_id, "revision": c.revision}
        for stage, c in (("describe", cfg.agent.describe), ("extract", cfg.agent.extract))
    }
    manifest["datasets"] = dataset_provenance(results_dir)
    existing = [p for p in outputs if p.exists()]
    manifest.setdefault("stages", {})[stage] = {
        "started_utc": started,
        "finished_utc": finished,
        "seconds": round(
            (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds(), 1
        ),
        "git": git_state(),
        "params_sha256": file_sha256(params_file),
        "artifacts": hash_tree(existing, results_dir),
        **(extra or {}),
    }
    write_json_atomic(ResultsLayout.at(results_dir).manifest, manifest)
    return manifest
