"""The agent's append-only JSONL cache: one record per line, keyed by a content hash.

* Appends are atomic per line: one ``os.write`` of the whole line on an ``O_APPEND`` descriptor,
  then ``fsync``, under an exclusive ``flock``. A process killed mid-write can leave at most one torn
  last line; readers ignore it and the next append cuts it off, so a rerun resumes with nothing lost
  and nothing duplicated.
* ``shard=(i, n)`` selects a deterministic subset of images (by a hash of ``image_id``) and writes
  ``<name>.shard-i-of-n.jsonl`` next to the main file; :func:`merge_shards` folds those files into the
  main one, de-duplicated by key, in a deterministic order.
* The merge holds the writers' lock on the main file and on every shard file while it reads them,
  replaces the main file and removes the shards. A writer that waited for the lock checks, once it
  holds it, that its descriptor is still the file at the path (same device and inode); if the merge
  replaced or removed it meanwhile, it opens the file now at the path, so no record goes to a file
  that no longer has a name.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "descriptions.jsonl"
    >>> cache = JsonlCache(path)
    >>> cache.append([{"key": "k1", "image_id": "a"}])
    >>> sorted(cache.keys()), shard_path(path, (1, 4)).name
    (['k1'], 'descriptions.shard-1-of-4.jsonl')
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Shard = tuple[int, int]
VOLATILE_FIELDS = ("provenance", "timing")
_SHARD_RE = re.compile(r"\.shard-(\d+)-of-(\d+)\.jsonl$")


def content_hash(payload: Any) -> str:
    """SHA-256 of the canonical JSON of ``payload`` (sorted keys, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def check_shard(shard: Shard) -> Shard:
    """Validate ``(i, n)``: ``0 <= i < n``."""
    i, n = int(shard[0]), int(shard[1])
    if n < 1 or not 0 <= i < n:
        raise ValueError(
            f"shard {shard!r} is invalid: need 0 <= i < n (e.g. --shard 0 --num-shards 4)"
        )
    return i, n


def in_shard(image_id: str, shard: Shard) -> bool:
    """Whether ``image_id`` belongs to shard ``(i, n)`` (stable across runs and machines)."""
    i, n = check_shard(shard)
    if n == 1:
        return True
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:16], 16) % n == i


def shard_path(path: Path, shard: Shard) -> Path:
    """``<name>.jsonl`` for ``(0, 1)``, else ``<name>.shard-i-of-n.jsonl`` beside it."""
    i, n = check_shard(shard)
    path = Path(path)
    return path if n == 1 else path.with_name(f"{path.stem}.shard-{i}-of-{n}.jsonl")


def shard_files(path: Path) -> list[Path]:
    """The shard files that belong to the main cache file ``path``, in (n, i) order."""
    path = Path(path)
    found = []
    for p in path.parent.glob(f"{path.stem}.shard-*-of-*.jsonl"):
        m = _SHARD_RE.search(p.name)
        if m:
            found.append(((int(m.group(2)), int(m.group(1))), p))
    return [p for _, p in sorted(found)]


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL file (missing file: none; a torn last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else a torn line
    if tail.strip():
        log.warning(
            "%s: ignoring a torn last line (%d bytes) from an interrupted write", path, len(tail)
        )
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{number} is not valid JSON ({err.msg}); only the last line can be torn by "
                f"a crash, so the file was edited or corrupted. Remove that line (or the file) and rerun."
            ) from err
    return records


def iter_unique(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Records with a key not seen before (the first occurrence wins)."""
    seen: set[str] = set()
    for rec in records:
        if rec["key"] not in seen:
            seen.add(rec["key"])
            yield rec


def stable_view(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its timing/host fields (for determinism checks)."""
    return {k: v for k, v in record.items() if k not in VOLATILE_FIELDS}


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file now at ``path`` (same device and inode)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (at_path.st_dev, at_path.st_ino)


@contextlib.contextmanager
def _locked_fd(path: Path, *, create: bool = True) -> Iterator[int | None]:
    """An append descriptor on ``path`` under the writers' exclusive lock, on the file that is at
    ``path`` once the lock is held (reopened when a merge replaced or removed it while we waited).
    ``create=False``: None when there is no file at ``path``."""
    flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if create:
                raise
            yield None
            return
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - Windows: single writer per file assumed
                break
            if _is_file_at(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file was replaced or removed while we waited: take the one at path
    try:
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _locked_append_fd(path: Path) -> Iterator[int]:
    with _locked_fd(path) as fd:
        assert fd is not None
        yield fd


def _repair_tail(fd: int, path: Path) -> None:
    """Cut a torn last line (no trailing newline) so that the next record starts on its own line."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) == b"\n":
        return
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        end = start
    else:
        keep = 0
    log.warning("%s: removing a torn last line (%d bytes) before appending", path, size - keep)
    os.ftruncate(fd, keep)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def encode_record(record: dict[str, Any]) -> bytes:
    """One JSONL line (sorted keys, UTF-8, newline-terminated)."""
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return (text + "\n").encode()


class JsonlCache:
    """The records of one stage: the main file plus, for a shard, its own shard file.

    Reads (``keys``/``records``) see the main file and the shard's file; appends go to the shard's
    file (the main file for ``(0, 1)``).
    """

    def __init__(self, path: Path, shard: Shard = (0, 1)):
        self.path = Path(path)
        self.shard = check_shard(shard)
        self.write_path = shard_path(self.path, self.shard)

    def records(self) -> list[dict[str, Any]]:
        files = [self.path] if self.write_path == self.path else [self.path, self.write_path]
        return list(iter_unique(r for f in files for r in read_records(f)))

    def keys(self) -> set[str]:
        return {r["key"] for r in self.records()}

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records durably, one atomic write + fsync per line."""
        records = list(records)
        if not records:
            return
        with _locked_append_fd(self.write_path) as fd:
            _repair_tail(fd, self.write_path)
            for rec in records:
                if "key" not in rec:
                    raise ValueError(f"cache record without a 'key' field: {sorted(rec)}")
                _write_all(fd, encode_record(rec))
                os.fsync(fd)


def write_records_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` with ``records`` (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        for rec in records:
            fh.write(encode_record(rec))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def merge_shards(path: Path, *, remove: bool = False) -> int:
    """Fold every ``<name>.shard-i-of-n.jsonl`` into ``path``; returns the number of new records.

    The result is the main file's records followed by the shards' new records sorted by
    ``(image_id, key)``, de-duplicated by key: the same whatever the shards' completion order.
    With ``remove=True`` the merged shard files are deleted afterwards.
    """
    path = Path(path)
    with _locked_append_fd(path), contextlib.ExitStack() as held:
        # the writers' lock on the main file, then on each shard (writers hold one lock at a time)
        locked = [(f, held.enter_context(_locked_fd(f, create=False))) for f in shard_files(path)]
        shards = [f for f, fd in locked if fd is not None]
        main = list(iter_unique(read_records(path)))
        known = {r["key"] for r in main}
        new: dict[str, dict[str, Any]] = {}
        for f in shards:
            for rec in read_records(f):
                if rec["key"] not in known:
                    new.setdefault(rec["key"], rec)
        added = sorted(new.values(), key=lambda r: (str(r.get("image_id", "")), r["key"]))
        write_records_atomic(path, [*main, *added])
        if remove:
            for f in shards:
                f.unlink()
    log.info("merged %d shard file(s) into %s: %d new record(s)", len(shards), path, len(added))
    return len(added)
