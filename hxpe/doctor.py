"""``make doctor``: is this machine ready for a profile? Lists each missing piece and how to get it.

Checks the GPU, the vLLM extra (in its own venv), the pinned weights the profile needs in the local
Hugging Face cache, and the dataset roots. Exit status 1 when anything required is missing.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass

from hxpe.config import Config
from hxpe.paths import repo_root, resolve
from hxpe.weights import clip_weight_key, local_snapshot, registry, spec_for_repo


@dataclass
class Check:
    item: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def required_weight_keys(cfg: Config) -> list[str]:
    """Which pinned weights the profile loads (CLIP, DINOv2, the agent's VLM and LLM)."""
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
    return keys


def _uses_pretrained_vfm(model_cfg) -> bool:
    """DINOv2 weights are needed when the prompts are on and not built from a config (random)."""
    vfm = model_cfg.vfm
    return bool(vfm.enabled and vfm.model_id and not vfm.config_file)


def check_gpu(need: bool) -> Check:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        mem = props.total_memory / 2**30
        ok = mem >= 70
        return Check(
            "GPU",
            ok or not need,
            f"{torch.cuda.device_count()} x {props.name}, {mem:.0f} GiB",
            "" if ok else "Qwen2-VL-72B-AWQ needs one 80 GB GPU (or bf16 with tensor parallelism).",
            required=need,
        )
    return Check(
        "GPU",
        not need,
        "no CUDA device visible to torch",
        "The paper profile needs an NVIDIA GPU (A100 80 GB class); check `nvidia-smi` and the CUDA "
        "build of torch.",
        required=need,
    )


def check_vllm(need: bool) -> Check:
    here = importlib.util.find_spec("vllm") is not None
    gpu_py = repo_root() / ".venv-vllm" / "bin" / "python"
    there = False
    if gpu_py.exists():
        there = (
            subprocess.run([str(gpu_py), "-c", "import vllm"], capture_output=True).returncode == 0
        )
    ok = here or there
    where = "this venv" if here else (".venv-vllm" if there else "nowhere")
    return Check(
        "vLLM extra",
        ok or not need,
        f"vllm importable in {where}",
        "" if ok else "make gpu-env   # builds .venv-vllm with vllm pinned in constraints.txt",
        required=need,
    )


def check_weights(keys: list[str]) -> list[Check]:
    reg = registry()
    out = []
    for key in keys:
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


def check_datasets(cfg: Config) -> list[Check]:
    """Each dataset root exists; the fix names the download (``hxpe/data/datasets.yaml``)."""
    from hxpe.data.registry import get_spec

    out = []
    for src in cfg.data.datasets:
        if src.kind == "demo":
            continue
        root = resolve(src.root) if src.root else None
        ok = root is not None and root.is_dir()
        out.append(
            Check(
                f"dataset {src.name}",
                ok,
                f"{src.kind} at {root}" + ("" if ok else " (missing)"),
                ""
                if ok
                else f"download: {get_spec(src.kind).download}; unpack it and set HXPE_DATA_ROOT "
                f"(or `root:` in the params file); then `hxpe prepare {src.kind} --root PATH` checks it",
            )
        )
    return out


def run_checks(cfg: Config) -> list[Check]:
    agent_gpu = "vllm" in (cfg.agent.describe.backend, cfg.agent.extract.backend)
    return [
        check_gpu(need=agent_gpu),
        check_vllm(need=agent_gpu),
        *check_weights(required_weight_keys(cfg)),
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
