"""``make doctor``: is this machine ready for a profile? Lists each missing piece and how to get it.

Checks the GPU, the vLLM extra (in its own venv), what Triton needs to compile vLLM's and
``torch.compile``'s kernels on first use (a C compiler and ``Python.h`` of each venv's interpreter),
the pinned weights the profile needs in the local Hugging Face cache, and the dataset roots. Exit
status 1 when anything required is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hxpe.config import Config
from hxpe.paths import repo_root, resolve
from hxpe.weights import clip_weight_key, local_snapshot, registry, spec_for_repo

if TYPE_CHECKING:
    from hxpe.model.config import ModelConfig


@dataclass
class Check:
    item: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def required_weight_keys(cfg: Config) -> list[str]:
    """Which pinned weights the profile loads (CLIPs, DINOv2, the agent's VLM and LLM, the authors'
    released checkpoints of ``released_*`` variants)."""

    keys: list[str] = []
    models = [cfg.model_for(v) for v in cfg.variants]
    for m in models:
        key = clip_weight_key(m.clip.model_name, m.clip.pretrained)
        if key is not None and key not in keys:
            keys.append(key)
    if any(_uses_pretrained_vfm(m) for m in models):
        keys.append("dinov2")
    for stage in (cfg.agent.describe, cfg.agent.extract):
        if stage.backend in ("vllm", "transformers"):
            spec = spec_for_repo(stage.model_id)
            if spec is not None and spec.key not in keys:
                keys.append(spec.key)
    for m in models:  # the authors' released checkpoints that variants evaluate
        if m.checkpoint is not None and m.checkpoint not in keys:
            keys.append(m.checkpoint)
    return keys


def _uses_pretrained_vfm(model_cfg: ModelConfig) -> bool:
    """DINOv2 hub weights are needed when the prompts are on and not built from a config (random)
    or read from a local folder (the demo's trained DINOv2)."""
    vfm = model_cfg.vfm
    return bool(vfm.enabled and vfm.model_id and not vfm.config_file and not vfm.weights_dir)


# Oldest NVIDIA driver of each CUDA major version (both venvs' torch wheels are CUDA 13 builds).
MIN_DRIVER = {13: 580, 12: 525}


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi`` (e.g. '580.65.06'), or None without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def driver_line(driver: str | None, cuda: str | None) -> tuple[str, bool]:
    """'driver X, torch built for CUDA Y (needs driver >= Z)' and whether the driver is new enough.

    >>> driver_line("570.86.15", "13.0")
    ('NVIDIA driver 570.86.15, torch built for CUDA 13.0 (needs driver >= 580)', False)
    """
    need = MIN_DRIVER.get(int(cuda.split(".")[0])) if cuda else None
    text = f"NVIDIA driver {driver or 'not found (no nvidia-smi)'}, torch built for CUDA {cuda or 'none (CPU build)'}"
    if need is not None:
        text += f" (needs driver >= {need})"
    ok = driver is not None and (need is None or int(driver.split(".")[0]) >= need)
    return text, ok


def check_gpu(need: bool) -> Check:
    import torch

    drivers, driver_ok = driver_line(nvidia_driver_version(), torch.version.cuda)
    upgrade = (
        "Both venvs' torch builds use CUDA 13, which needs NVIDIA driver >= 580: check `nvidia-smi` "
        "and upgrade the driver (or run on a machine that has it)."
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        mem = props.total_memory / 2**30
        ok = mem >= 70
        return Check(
            "GPU",
            ok or not need,
            f"{torch.cuda.device_count()} x {props.name}, {mem:.0f} GiB; {drivers}",
            "" if ok else "Qwen2-VL-72B-AWQ needs one 80 GB GPU (or bf16 with tensor parallelism).",
            required=need,
        )
    return Check(
        "GPU",
        not need,
        f"no CUDA device visible to torch; {drivers}",
        upgrade
        if not driver_ok
        else "The paper profile needs an NVIDIA GPU (A100 80 GB class); the driver is new enough, so "
        "check CUDA_VISIBLE_DEVICES and that torch is the CUDA build.",
        required=need,
    )


def check_vllm(need: bool) -> Check:
    here = importlib.util.find_spec("vllm") is not None
    gpu_py = repo_root() / ".venv-vllm" / "bin" / "python"
    there = False
    if (repo_root() / ".venv-vllm" / ".installed").exists():  # the stamp of a finished make gpu-env
        there = (
            subprocess.run([str(gpu_py), "-c", "import vllm"], capture_output=True).returncode == 0
        )
    ok = here or there
    where = "this venv" if here else (".venv-vllm" if there else "nowhere")
    return Check(
        "vLLM extra",
        ok or not need,
        f"vllm importable in {where}",
        "" if ok else "make gpu-env   # builds .venv-vllm from constraints-gpu.txt",
        required=need,
    )


def c_compiler() -> str | None:
    """The C compiler Triton builds its kernel launchers with: ``$CC``, else ``gcc``, else
    ``clang`` on the PATH (triton/runtime/build.py); None when there is none."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("gcc") or shutil.which("clang")


# Where Triton looks for Python.h: the include path of the interpreter's install scheme.
_INCLUDE_PROBE = (
    "import json, sys, sysconfig; s = sysconfig.get_default_scheme(); "
    "s = 'posix_prefix' if s == 'posix_local' else s; "
    "print(json.dumps({'include': sysconfig.get_paths(scheme=s)['include'], "
    "'version': '%d.%d' % sys.version_info[:2]}))"
)


def python_include(python: str | Path) -> tuple[Path, str]:
    """``(include dir, 'X.Y')`` of the interpreter ``python``: where Triton looks for Python.h."""
    done = subprocess.run(
        [str(python), "-c", _INCLUDE_PROBE], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"{python} could not report its include path: {done.stderr.strip()}")
    info = json.loads(done.stdout)
    return Path(info["include"]), info["version"]


def check_build_tools(need: bool, venvs: dict[str, Path] | None = None) -> list[Check]:
    """A C compiler and ``Python.h`` for each venv's interpreter (default: this one, and
    ``.venv-vllm`` once built): without them Triton fails when vLLM starts its engine."""
    if venvs is None:
        venvs = {"this venv": Path(sys.executable)}
        gpu_py = repo_root() / ".venv-vllm" / "bin" / "python"
        if gpu_py.exists():
            venvs[".venv-vllm"] = gpu_py
    cc = c_compiler()
    out = [
        Check(
            "C compiler (Triton)",
            cc is not None,
            cc
            or f"none ({'$CC=' + os.environ['CC'] if os.environ.get('CC') else 'no gcc or clang on PATH'})",
            ""
            if cc
            else "sudo apt-get install gcc   # or conda install -c conda-forge gcc; or set CC",
            required=need,
        )
    ]
    for name, python in venvs.items():
        include, version = python_include(python)
        ok = (include / "Python.h").is_file()
        out.append(
            Check(
                f"Python.h ({name})",
                ok,
                f"{include / 'Python.h'}" + ("" if ok else " (missing)") + f", Python {version}",
                ""
                if ok
                else f"sudo apt-get install python{version}-dev   # the headers of {python}",
                required=need,
            )
        )
    return out


def check_weights(keys: list[str]) -> list[Check]:
    """Each hub snapshot among ``keys`` is in the local cache (released checkpoints:
    :func:`check_released`)."""
    reg = registry()
    out = []
    for key in (k for k in keys if k in reg):
        spec = reg[key]
        snap = local_snapshot(spec)
        rev = spec.revision or "UNPINNED (main)"
        out.append(
            Check(
                f"weights {key}",
                snap is not None,
                f"{spec.repo_id} @ {rev}: " + (str(snap) if snap else "not in the HF cache"),
                "" if snap else spec.fetch_command,
            )
        )
    return out


def check_released(cfg: Config) -> list[Check]:
    """The authors' released checkpoints that variants evaluate (``model.checkpoint``), one per
    direction's auxiliary dataset; missing ones are required for those variants' rows."""
    from hxpe.weights import released_checkpoints

    released = released_checkpoints()
    out = []
    for variant in cfg.variants:
        key = cfg.model_for(variant).checkpoint
        if key is None:
            continue
        spec = released[key]
        for aux in sorted({d.train for d in cfg.evaluation.directions}):
            path = spec.path(aux)
            ok = path.is_file()
            out.append(
                Check(
                    f"released {key} ({aux})",
                    ok,
                    str(path) + ("" if ok else " (missing)"),
                    "" if ok else _released_fix(key, str(spec.file_for(aux)["url"]), path),
                )
            )
    return out


def _released_fix(key: str, url: str, path: Path) -> str:
    """The command that fetches a released checkpoint's file: by hand for a Google Drive file while
    ``gdown`` is missing (``make fetch-models`` skips it then)."""
    from hxpe.weights import gdown_available, is_drive, manual_drive_command

    if is_drive(url) and not gdown_available():
        return manual_drive_command(url, path)
    return f"make fetch-models MODELS={key}   # {url}"


def check_datasets(cfg: Config) -> list[Check]:
    """Each dataset root exists and holds the class folders; the fix names the download and the
    unpack command (``hxpe/data/datasets.yaml``), or the command that repairs a known unpacking
    mistake (:mod:`hxpe.data.diagnose`)."""
    from hxpe.data.diagnose import diagnose_root
    from hxpe.data.registry import get_spec

    out = []
    for src in cfg.data.datasets:
        if src.kind == "demo":
            continue
        spec = get_spec(src.kind)
        raw_root = resolve(src.root) if src.root else None
        candidates = [resolve(r) for r in src.prefer_roots] + ([raw_root] if raw_root else [])
        root = next((r for r in candidates if r.is_dir()), candidates[-1] if candidates else None)
        # an authors' prepared tree (prefer_roots) has its own layout: only the raw root is diagnosed
        problem = diagnose_root(spec, root) if root is not None and root == raw_root else None
        ok = root is not None and root.is_dir() and problem is None
        if ok:
            fix = ""
        elif problem:
            fix = problem
        else:
            unpack = f"; unpack: {spec.unpack}" if spec.unpack else "; unpack it"
            fix = (
                f"download: {spec.download}{unpack}; set HXPE_DATA_ROOT (or `root:` in the params "
                f"file); then `hxpe prepare {src.kind} --root PATH` checks it"
            )
        detail = "" if ok else (" (wrong layout)" if problem else " (missing)")
        out.append(Check(f"dataset {src.name}", ok, f"{src.kind} at {root}{detail}", fix))
    return out


def run_checks(cfg: Config) -> list[Check]:
    agent_gpu = "vllm" in (cfg.agent.describe.backend, cfg.agent.extract.backend)
    return [
        check_gpu(need=agent_gpu),
        check_vllm(need=agent_gpu),
        *check_build_tools(need=agent_gpu),
        *check_weights(required_weight_keys(cfg)),
        *check_released(cfg),
        *check_datasets(cfg),
        Check(
            "disk",
            True,
            f"{shutil.disk_usage(repo_root()).free / 2**30:.0f} GiB free at {repo_root()}",
            required=False,
        ),
    ]


def report(checks: list[Check]) -> tuple[str, bool]:
    """A readable report and whether everything required is present."""
    lines = []
    for c in checks:
        mark = "ok " if c.ok else ("MISSING" if c.required else "warn")
        lines.append(f"[{mark:>7}] {c.item}: {c.detail}")
        if c.fix and not c.ok:
            lines.append(f"          -> {c.fix}")
    ready = all(c.ok for c in checks if c.required)
    lines.append(
        "READY" if ready else "NOT READY: fix the MISSING items above, then rerun make doctor."
    )
    return "\n".join(lines), ready
