"""The pinned model weights (``hxpe/weights.yaml``): where they are cached and how to get them.

Example:
    >>> spec = weight_spec("dinov2")
    >>> spec.repo_id
    'facebook/dinov2-small'
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
_REGISTRY_FILE = Path(__file__).with_name("weights.yaml")


@dataclass(frozen=True)
class WeightSpec:
    key: str
    repo_id: str
    revision: str | None
    role: str
    weight_patterns: tuple[str, ...]
    allow_patterns: tuple[str, ...]
    size_gb: float
    licence: str

    @property
    def fetch_command(self) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"make fetch-models MODELS={self.key}   # or: hf download {self.repo_id}{rev}"


def registry() -> dict[str, WeightSpec]:
    """All pinned weights, keyed by role name (clip, dinov2, vlm_awq, vlm, llm)."""
    raw = yaml.safe_load(_REGISTRY_FILE.read_text())
    return {
        key: WeightSpec(
            key=key,
            repo_id=v["repo_id"],
            revision=v.get("revision"),
            role=v["role"],
            weight_patterns=tuple(v.get("weight_patterns", [])),
            allow_patterns=tuple(v.get("allow_patterns", [])),
            size_gb=float(v.get("size_gb", 0)),
            licence=v.get("licence", ""),
        )
        for key, v in raw.items()
    }


def weight_spec(key: str) -> WeightSpec:
    reg = registry()
    if key not in reg:
        raise KeyError(f"No pinned weights named {key!r}; known: {sorted(reg)} (hxpe/weights.yaml)")
    return reg[key]


def spec_for_repo(repo_id: str) -> WeightSpec | None:
    """The registry entry of a Hugging Face repo id, if it is one of ours."""
    return next((s for s in registry().values() if s.repo_id == repo_id), None)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache this process uses (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def local_snapshot(spec: WeightSpec) -> Path | None:
    """The cached snapshot directory of ``spec`` at its pinned revision, or None if absent.

    A snapshot counts only when it holds at least one file matching ``weight_patterns``.
    """
    repo_dir = hub_cache_dir() / ("models--" + spec.repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    if spec.revision:
        candidates = [snapshots / spec.revision]
    else:
        ref = repo_dir / "refs" / "main"
        candidates = [snapshots / ref.read_text().strip()] if ref.is_file() else []
    for snap in candidates:
        if snap.is_dir() and any(
            fnmatch.fnmatch(f.name, pat) for f in snap.iterdir() for pat in spec.weight_patterns
        ):
            return snap
    return None


def missing_weights_message(spec: WeightSpec) -> str:
    """The one message every loader raises when weights are absent."""
    return (
        f"Weights for {spec.repo_id} (revision {spec.revision or 'unpinned: main'}) are not in the "
        f"local Hugging Face cache {hub_cache_dir()}. On a machine with internet run:\n"
        f"    {spec.fetch_command}\n"
        f"then copy the cache to this machine (or point HF_HOME at it). `make doctor` lists all "
        f"missing pieces."
    )


def require_snapshot(key: str) -> Path:
    """The local snapshot of a pinned model; raises FileNotFoundError with the fetch command."""
    spec = weight_spec(key)
    snap = local_snapshot(spec)
    if snap is None:
        raise FileNotFoundError(missing_weights_message(spec))
    return snap


def fetch_plan(keys: list[str]) -> list[WeightSpec]:
    """The specs to download, in order, each once; unknown keys are errors naming the known ones."""
    return [weight_spec(k) for k in dict.fromkeys(keys)]


def describe_plan(plan: list[WeightSpec]) -> str:
    """One line per model (repo, revision, size, files) and the total size."""
    lines = [
        f"  {s.key:8s} {s.repo_id} @ {s.revision or 'main (unpinned)'}  ~{s.size_gb:g} GB  "
        f"files: {' '.join(s.allow_patterns) or 'all'}"
        for s in plan
    ]
    return "\n".join([*lines, f"  total ~{sum(s.size_gb for s in plan):g} GB"])


def fetch(keys: list[str]) -> dict[str, str]:
    """Download the pinned snapshots of ``keys`` (needs internet), only the files of each entry's
    ``allow_patterns``; returns key -> resolved commit SHA."""
    from huggingface_hub import snapshot_download

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError("HF_HUB_OFFLINE=1 is set; unset it to download weights.")
    resolved = {}
    for spec in fetch_plan(keys):
        log.info("Fetching %s @ %s (%.1f GB)", spec.repo_id, spec.revision or "main", spec.size_gb)
        path = snapshot_download(
            spec.repo_id, revision=spec.revision, allow_patterns=list(spec.allow_patterns) or None
        )
        resolved[spec.key] = Path(path).name
    return resolved
