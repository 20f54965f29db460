"""The ``replay`` backend: reuse records from a cache file, never a model.

A record is reused when it was made for the same image (``image_id`` and image bytes), the same
reference bytes (describe) or description (extract), by the configured ``model_id`` and template id.
The source is ``options.source`` (default: the stage's own cache). A missing entry is an error that
names the image, so a replayed run is complete or fails.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hxpe.agent.cache import read_records, shard_files
from hxpe.paths import resolve

log = logging.getLogger(__name__)

Match = tuple[Any, ...]


def replay_source(options: dict[str, Any], cache_path: Path) -> list[Path]:
    """The files replay reads: ``options.source`` or the cache (with its shard files)."""
    unknown = set(options) - {"source"}
    if unknown:
        raise ValueError(f"the replay backend takes only option 'source'; got {sorted(unknown)}")
    if "source" in options:
        src = resolve(options["source"])
        if not src.is_file():
            raise FileNotFoundError(f"replay source {src} (agent.*.options.source) does not exist")
        return [src]
    return [Path(cache_path), *shard_files(Path(cache_path))]


def replay_records(
    wanted: Sequence[dict[str, Any]], on: Sequence[str], files: Sequence[Path]
) -> list[dict[str, Any]]:
    """For each wanted record (the fields a new one would start with) the newest record of
    ``files`` that has the same values of the fields ``on``; missing ones are an error."""

    def match(rec: dict[str, Any]) -> Match:
        return tuple(rec[k] for k in on)

    table: dict[Match, dict[str, Any]] = {}
    for f in files:
        for rec in read_records(f):
            table[match(rec)] = rec  # later lines are newer
    missing = [w["image_id"] for w in wanted if match(w) not in table]
    if missing:
        raise KeyError(
            f"replay: {len(missing)} image(s) have no cached record in {[str(f) for f in files]}, "
            f"e.g. {missing[:5]}. Run the stage with a model backend first, or point "
            f"options.source at a cache made with the same model_id, template and images."
        )
    return [table[match(w)] for w in wanted]
