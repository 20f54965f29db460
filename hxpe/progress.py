"""Progress bars and log lines go to the terminal, never into a saved notebook.

In a Jupyter kernel ``sys.stderr`` is the cell's output, so a progress bar there becomes a wall of
carriage-return lines (or an empty widget) in the executed notebook; ipykernel also forwards what
reaches file descriptor 2 into the cell. :func:`terminal` is the stream the kernel process was
started with (ipykernel keeps a duplicate of it): the terminal that runs ``make`` or papermill, or
the shell of a command-line run.

Example (a bar writes to the stream it is given, the terminal by default):
    >>> import io
    >>> out = io.StringIO()
    >>> sum(progress(range(3), desc="demo", file=out, mininterval=0))
    3
    >>> "demo: 100%" in out.getvalue()
    True
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.std import tqdm


def terminal() -> TextIO:
    """The process's own standard error (a notebook's kernel: the terminal that started it)."""
    original = getattr(sys.stderr, "_original_stdstream_copy", None)  # ipykernel's copy of fd 2
    if isinstance(original, int):
        return _fd_stream(original)
    return sys.__stderr__ or sys.stderr


@functools.lru_cache(maxsize=4)
def _fd_stream(fd: int) -> TextIO:
    return os.fdopen(fd, "w", buffering=1, closefd=False)


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A plain-text tqdm bar on :func:`terminal` (never a notebook widget or a cell output)."""
    kwargs.setdefault("file", terminal())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
