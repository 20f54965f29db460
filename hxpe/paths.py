"""Where things live: the repository root and the folder of every profile's results.

``HXPE_RESULTS_ROOT`` redirects every profile's results (the notebook tests use it so that they never
touch ``results/``); it is the only environment variable that changes where outputs go. The paths
inside a profile's results are :class:`hxpe.results_layout.ResultsLayout`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_ROOT_ENV = "HXPE_RESULTS_ROOT"


def repo_root() -> Path:
    """The checkout's root: the nearest parent of this package holding ``pyproject.toml``.

    Falls back to the current directory for an installed (non-editable) package.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "hxpe").is_dir():
            return candidate
    return Path.cwd()


def resolve(path: str | Path) -> Path:
    """Resolve a path from a params file: absolute paths stay, relative ones start at the repo root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def results_root() -> Path:
    """The folder holding every profile's results: ``$HXPE_RESULTS_ROOT``, else ``<repo>/results``."""
    root = os.environ.get(RESULTS_ROOT_ENV)
    return Path(root).expanduser() if root else repo_root() / "results"
