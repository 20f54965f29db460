"""Atomic writes: a file or a directory appears complete at its final path, or not at all.

Everything a stage writes goes through here (or through an append-only cache), so an interrupted
run never leaves a half-written artifact that a rerun or ``make`` would take as finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file in the same directory, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """JSON (indented, sorted keys, trailing newline) written with :func:`write_text_atomic`."""
    write_text_atomic(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")


def replace_dir(staging: Path, target: Path) -> None:
    """Put the finished directory ``staging`` at ``target``, replacing an older ``target``.

    The old content is moved aside first and removed only after the rename succeeded, so ``target``
    always holds one complete version.
    """
    old = target.parent / f".{target.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)
