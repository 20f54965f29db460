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
from typing import Any

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


def _raw() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(_REGISTRY_FILE.read_text())
    return raw


def registry() -> dict[str, WeightSpec]:
    """All pinned Hugging Face weights, keyed by role name (clip, clip-b16, dinov2, vlm_awq, vlm, llm,
    winclip_clip)."""
    raw = {k: v for k, v in _raw().items() if v.get("kind") != AUTHORS_CHECKPOINT}
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


AUTHORS_CHECKPOINT = "authors_checkpoint"


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """An authors' released checkpoint: one file per auxiliary (training) dataset, by URL."""

    key: str
    format: str  # "anomalyclip" | "adaclip" (hxpe.model.importers)
    role: str
    files: dict[str, dict[str, str | None]]  # aux dataset -> {url, sha256, ...}

    def path(self, aux: str) -> Path:
        """Where the file for auxiliary dataset ``aux`` is (to be) stored."""
        root = Path(
            os.environ.get("HXPE_RELEASED_DIR", Path.home() / ".cache" / "hxpe" / "released")
        )
        return root / self.key / f"{aux}.pth"

    def file_for(self, aux: str) -> dict[str, str | None]:
        if aux not in self.files:
            raise KeyError(
                f"{self.key} has no checkpoint trained on {aux!r} (hxpe/weights.yaml has "
                f"{sorted(self.files)})."
            )
        return self.files[aux]


def released_checkpoints() -> dict[str, ReleasedCheckpoint]:
    """The authors' released checkpoints of ``hxpe/weights.yaml`` (kind: authors_checkpoint)."""
    return {
        key: ReleasedCheckpoint(key, v["format"], v.get("role", ""), dict(v["files"]))
        for key, v in _raw().items()
        if v.get("kind") == AUTHORS_CHECKPOINT
    }


def is_drive(url: str) -> bool:
    return "drive.google.com" in url


def gdown_available() -> bool:
    """Whether ``gdown`` (Google Drive downloads; in no extra of this project) is importable."""
    import importlib.util

    return importlib.util.find_spec("gdown") is not None


def manual_drive_command(url: str, target: Path) -> str:
    """How to fetch a Google Drive file by hand into ``target``."""
    return (
        f"pip install gdown && gdown --fuzzy '{url}' -O '{target}'   "
        f"(or open the link in a browser and save the file as {target})"
    )


def fetch_released(key: str) -> tuple[dict[str, str], list[str]]:
    """Download every file of a released checkpoint (GitHub raw by HTTP, Google Drive through
    ``gdown`` when it is installed); returns aux dataset -> SHA-256 of each file present, and one
    warning per Drive file skipped because ``gdown`` is missing (with the manual command). A file
    already at its path (e.g. downloaded by hand) is hashed, not fetched again."""
    import urllib.request

    from hxpe.hashing import file_sha256

    spec = released_checkpoints()[key]
    out: dict[str, str] = {}
    skipped: list[str] = []
    for aux, entry in spec.files.items():
        target = spec.path(aux)
        url = str(entry["url"])
        if not target.is_file():
            if is_drive(url) and not gdown_available():
                skipped.append(
                    f"{key} ({aux}) is a Google Drive file and gdown is not installed: skipped. "
                    f"Fetch it by hand: {manual_drive_command(url, target)}"
                )
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            log.info("Fetching %s (%s) from %s", key, aux, url)
            if is_drive(url):
                import gdown

                gdown.download(url, str(target), fuzzy=True, quiet=False)
            else:
                urllib.request.urlretrieve(url, target)  # noqa: S310 (pinned https URL)
        digest = file_sha256(target)
        if entry.get("sha256") and entry["sha256"] != digest:
            raise RuntimeError(
                f"{target}: SHA-256 {digest} differs from the pinned {entry['sha256']}."
            )
        out[aux] = digest
    return out, skipped


# open_clip (model name, pretrained tag) pairs whose weights are one of our pinned snapshots.
CLIP_TAGS: dict[tuple[str, str], str] = {
    ("ViT-L-14-336-quickgelu", "openai"): "clip",
    ("ViT-B-16-quickgelu", "openai"): "clip-b16",
    ("ViT-B-16-plus-240", "laion400m_e31"): "winclip_clip",
}  # OpenAI weights only with the -quickgelu names (hxpe.model.loading.require_quickgelu)


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


def json_safe(value: dict[str, str]) -> str:
    """A lock-file value for a multi-file entry."""
    return ",".join(f"{k}:{v}" for k, v in sorted(value.items()))


def fetch_plan(keys: list[str]) -> list[WeightSpec | ReleasedCheckpoint]:
    """The entries to download, in order, each once (hub snapshots and the authors' released
    checkpoints); unknown keys are errors naming the known ones."""
    released = released_checkpoints()
    return [released[k] if k in released else weight_spec(k) for k in dict.fromkeys(keys)]


def describe_plan(plan: list[WeightSpec | ReleasedCheckpoint]) -> str:
    """One line per model (repo, revision, size, files; or a released checkpoint's URLs, saying
    which Google Drive files will be skipped for want of ``gdown``) and the total size of the hub
    snapshots."""
    lines = []
    for s in plan:
        if isinstance(s, ReleasedCheckpoint):
            urls = " ".join(str(f.get("url")) for f in s.files.values())
            lines.append(f"  {s.key:8s} the authors' checkpoint ({', '.join(s.files)}): {urls}")
            drive = [
                a for a, f in s.files.items() if is_drive(str(f["url"])) and not s.path(a).is_file()
            ]
            if drive and not gdown_available():
                lines.append(
                    f"           Google Drive files {drive}: gdown is not installed, they will be "
                    f"skipped (the manual command is printed at the end)"
                )
        else:
            lines.append(
                f"  {s.key:8s} {s.repo_id} @ {s.revision or 'main (unpinned)'}  ~{s.size_gb:g} GB  "
                f"files: {' '.join(s.allow_patterns) or 'all'}"
            )
    hub = [s for s in plan if isinstance(s, WeightSpec)]
    return "\n".join([*lines, f"  total ~{sum(s.size_gb for s in hub):g} GB (hub snapshots)"])


@dataclass
class FetchResult:
    """What :func:`fetch` got: key -> resolved commit SHA (or the released files' SHA-256), and the
    files it skipped, each with the command that fetches it by hand."""

    resolved: dict[str, str]
    skipped: list[str]


def write_models_lock(lock: Path, resolved: dict[str, str]) -> None:
    """Merge ``resolved`` into the lock file (``results/models.lock.json``), written atomically:
    entries of earlier runs stay, the ones fetched now are updated."""
    import json

    from hxpe.atomic import write_json_atomic

    old = json.loads(lock.read_text()) if lock.is_file() else {}
    write_json_atomic(lock, {**old, **resolved})


def fetch(keys: list[str], lock: Path | None = None) -> FetchResult:
    """Download the pinned snapshots of ``keys`` (needs internet), only the files of each entry's
    ``allow_patterns``, and the authors' released checkpoints among them. With ``lock``, every
    entry fetched is recorded there at once (:func:`write_models_lock`), so the lock holds what was
    fetched even when a later download fails."""
    from huggingface_hub import snapshot_download

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError("HF_HUB_OFFLINE=1 is set; unset it to download weights.")
    result = FetchResult({}, [])
    for spec in fetch_plan(keys):
        if isinstance(spec, ReleasedCheckpoint):
            digests, skipped = fetch_released(spec.key)
            result.skipped += skipped
            if not digests:
                continue
            value = json_safe(digests)
        else:
            log.info(
                "Fetching %s @ %s (%.1f GB)", spec.repo_id, spec.revision or "main", spec.size_gb
            )
            path = snapshot_download(
                spec.repo_id,
                revision=spec.revision,
                allow_patterns=list(spec.allow_patterns) or None,
            )
            value = Path(path).name
        result.resolved[spec.key] = value
        if lock is not None:
            write_models_lock(lock, {spec.key: value})
    return result
