"""Atomic writes: a file or a directory appears complete at its final path, or not at all.

Everything a stage writes goes through here (or through an append-only cache), so an interrupted
run never leaves a half-written artifact that a rerun or ``make`` would take as finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
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


class OutputRefused(ValueError):
    """An output option names a folder that the program did not make (or a file)."""


@dataclass(frozen=True)
class OutputKind:
    """What a command writes into an output folder: a previous output of this kind holds every one
    of ``files`` (files or folders), which tells it from a user's folder that must never be
    replaced."""

    name: str
    files: tuple[str, ...]

    def missing(self, folder: Path) -> list[str]:
        """The files of this kind that ``folder`` lacks (empty: a previous output)."""
        return [name for name in self.files if not (folder / name).exists()]


def check_output_dir(
    target: Path, kind: OutputKind, *, force: bool = False, option: str = "--out"
) -> None:
    """Refuse ``target`` as the folder a command replaces, unless it is new, empty, or a previous
    output of ``kind`` (or ``force``). A file (or a link to one) is always refused.

    Example:
        >>> kind = OutputKind("book", ("index.html",))
        >>> (tmp_path / "mine").mkdir(); _ = (tmp_path / "mine" / "notes.txt").write_text("x")
        >>> try:
        ...     check_output_dir(tmp_path / "mine", kind)
        ... except OutputRefused as err:
        ...     print(err)
        --out .../mine holds files that are not a previous book (it lacks index.html): refusing to
        replace it. Choose a new or empty folder, or pass --force to replace it and everything in it.
        >>> check_output_dir(tmp_path / "mine", kind, force=True)  # the user said so
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputRefused(
            f"{option} {target} is a file, not a folder: give the path of a new or empty folder "
            f"(or of a previous {kind.name})."
        )
    if force or not target.is_dir() or not any(target.iterdir()):
        return
    missing = kind.missing(target)
    if missing:
        raise OutputRefused(
            f"{option} {target} holds files that are not a previous {kind.name} (it lacks "
            f"{', '.join(missing)}): refusing to replace it. Choose a new or empty folder, or "
            f"pass --force to replace it and everything in it."
        )


def replace_dir(staging: Path, target: Path, kind: OutputKind, *, force: bool = False) -> None:
    """Put the finished directory ``staging`` at ``target``, replacing an older ``target``.

    ``target`` must pass :func:`check_output_dir` (new, empty, a previous output of ``kind``, or
    ``force``). The old content is moved aside first and removed only after the rename succeeded, so
    ``target`` always holds one complete version.
    """
    check_output_dir(target, kind, force=force)
    old = target.parent / f".{target.name}.old"
    _remove_moved_aside(old)
    if target.exists() or target.is_symlink():
        target.rename(old)
    staging.rename(target)
    _remove_moved_aside(old)


def _remove_moved_aside(old: Path) -> None:
    """Remove what :func:`replace_dir` moved aside: a folder, or only the link when ``--out`` was a
    link to one (the folder it points to is not ours to remove)."""
    if old.is_symlink():
        old.unlink()
    elif old.exists():
        shutil.rmtree(old)
