"""The one collector of software versions, recorded wherever an artifact says what made it.

Used by the run manifest (:mod:`hxpe.provenance`), checkpoints (:mod:`hxpe.train`), agent records
(:mod:`hxpe.agent.runner`) and single-image predictions (:mod:`hxpe.predict`).

Example:
    >>> versions = software_versions()
    >>> list(versions)[:3]
    ['python', 'hxpe', 'torch']
    >>> versions["vllm"] is None or isinstance(versions["vllm"], str)  # None when not installed
    True
"""

from __future__ import annotations

import functools
import platform
from importlib import metadata

TRACKED_PACKAGES = (
    "hxpe",
    "torch",
    "torchvision",
    "open_clip_torch",
    "transformers",
    "huggingface_hub",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "scikit-image",
    "pillow",
    "papermill",
    "vllm",
)


@functools.lru_cache(maxsize=1)
def _collect() -> tuple[tuple[str, str | None], ...]:
    found: list[tuple[str, str | None]] = [("python", platform.python_version())]
    for name in TRACKED_PACKAGES:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, None))
    return tuple(found)


def software_versions() -> dict[str, str | None]:
    """Python's version, then each of :data:`TRACKED_PACKAGES` (``None`` when not installed).

    Collected once per process; every call returns a fresh dict.
    """
    return dict(_collect())
