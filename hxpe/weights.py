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
    size_gb: float
    licence: str

    @property
    def fetch_command(self) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"make fetch-models MODELS={self.key}   # or: hf download {self.repo_id}{rev}"


def registry() -> dict[str, WeightSpec]:
    """All pinned weights, keyed by role name (clip, clip-b16, dinov2, vlm_awq, vlm, llm)."""
    raw = yaml.safe_load(_REGISTRY_FILE.read_text())
    return {
        key: WeightSpec(
            key=key,
            repo_id=v["repo_id"],
            revision=v.get("revision"),
            role=v["role"],
            weight_patterns=tuple(v.get("weight_patterns", [])),
            size_gb=float(v.get("size_gb", 0)),
            licence=v.get("licence", ""),
        )
        for key, v in raw.items()
    }


# open_clip (model name, pretrained tag) pairs whose weights are one of our pinned snapshots.
CLIP_TAGS: dict[tuple[str, str], str] = {
    ("ViT-L-14-336-quickgelu", "openai"): "clip",
    ("ViT-L-14-336", "openai"): "clip",
    ("ViT-B-16-quickgelu", "openai"): "clip-b16",
    ("ViT-B-16", "openai"): "clip-b16",
}


def clip_weight_key(model_name: str, pretrained: str | None) -> str | None:
    """The registry key of an open_clip model's pinned weights, or None (random or unpinned).

    Example:
        >>> clip_weight_key("ViT-B-16-quickgelu", "openai")
        'clip-b16'
        >>> clip_weight_key("hxpe-tiny-clip", None) is None
        True
    """
    return CLIP_TAGS.get((model_name, pretrained or ""))


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


def fetch(keys: list[str] | None = None) -> dict[str, str]:
    """Download the pinned snapshots (needs internet); returns key -> resolved commit SHA."""
    from huggingface_hub import snapshot_download

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError("HF_HUB_OFFLINE=1 is set; unset it to download weights.")
    resolved = {}
    for key in keys or list(registry()):
        spec = weight_spec(key)
        log.info("Fetching %s @ %s (%.1f GB)", spec.repo_id, spec.revision or "main", spec.size_gb)
        path = Path(snapshot_download(spec.repo_id, revision=spec.revision))
        resolved[key] = path.name
    return resolved
