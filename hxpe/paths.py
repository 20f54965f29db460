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


def why_missing(path: Path, what: str = "file") -> str:
    """Why ``path`` cannot be used as an existing ``what``: a symbolic link loop, a broken link, or
    nothing there; one sentence with what to do.

    Example:
        >>> loop = tmp_path / "loop.png"
        >>> os.symlink(loop, loop)
        >>> why_missing(loop, "image").endswith("is a symbolic link loop; point it at a real file.")
        True
    """
    import errno

    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"{what.capitalize()} {path} is a symbolic link loop; point it at a real file."
        if path.is_symlink():
            return (
                f"{what.capitalize()} {path} is a broken symbolic link (to {os.readlink(path)}); "
                f"point it at a real file."
            )
    return f"{what.capitalize()} {path} does not exist; check the path."
