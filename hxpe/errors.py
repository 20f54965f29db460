"""One line for the user per failure: what went wrong, where, and what to do (the CLI and the app).

The project's own errors already carry such a message (``FileNotFoundError``, ``ValueError`` and their
subclasses, ``KeyError``); :func:`user_message` passes them on as one line and adds the advice the
bare exception lacks for ``OSError`` (the path and its operation), ``MemoryError`` and
``RuntimeError`` (both: what to make smaller). Anything else is a bug and gets no message (``None``),
so its traceback is shown.

Example:
    >>> user_message(PermissionError(13, "Permission denied", "results/demo"))
    'Permission denied: results/demo. Check that the path exists and that you may read and write it (and that the disk has room).'
    >>> user_message(MemoryError(), "hxpe predict")
    'hxpe predict ran out of memory. Use a smaller image (--max-pixels), a smaller --image-size or batch size, or a machine with more memory.'
    >>> user_message(KeyError("Unknown variant 'x'"))
    "Unknown variant 'x'"
    >>> user_message(ZeroDivisionError("division by zero")) is None
    True
"""

from __future__ import annotations

MEMORY_ADVICE = (
    "Use a smaller image (--max-pixels), a smaller --image-size or batch size, or a machine with "
    "more memory."
)
OS_ADVICE = (
    "Check that the path exists and that you may read and write it (and that the disk has room)."
)


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line (runs of whitespace and newlines become one space), cut at ``limit``."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def user_message(err: BaseException, command: str = "hxpe") -> str | None:
    """The one-line message for ``err`` raised while running ``command``; ``None`` for a bug."""
    if isinstance(err, KeyError):
        return one_line(err.args[0] if err.args else "missing key")
    if isinstance(err, MemoryError):
        return f"{command} ran out of memory. {MEMORY_ADVICE}"
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
        if err.filename is not None and err.strerror:
            where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
            return one_line(f"{err.strerror}: {where}. {OS_ADVICE}")
        return one_line(f"{err or type(err).__name__}. {OS_ADVICE}")
    if isinstance(err, (FileNotFoundError, ValueError)):
        return one_line(str(err))
    if isinstance(err, RuntimeError):
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return one_line(
            f"{command} failed: {text}. If this is out of (GPU) memory: {MEMORY_ADVICE}", 400
        )
    return None
