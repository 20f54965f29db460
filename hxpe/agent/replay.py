"""The ``replay`` backend: reuse records from a cache file, never a model.

A record is reused when it was made for the same image (``image_id`` and image bytes), the same
reference bytes (describe) or description (extract), by the configured ``model_id`` and template id.
The source is ``options.source`` (default: the stage's own cache). A missing entry is an error that
names the image, so a replayed run is complete or fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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
    wanted: Sequence[tuple[str, Match]],
    files: Sequence[Path],
    match_of: Callable[[dict[str, Any]], Match],
) -> list[dict[str, Any]]:
    """For each ``(image_id, match)`` the newest matching record; missing ones are an error."""
    table: dict[Match, dict[str, Any]] = {}
    for f in files:
        for rec in read_records(f):
            table[match_of(rec)] = rec  # later lines are newer
    missing = [image_id for image_id, m in wanted if m not in table]
    if missing:
        raise KeyError(
            f"replay: {len(missing)} image(s) have no cached record in {[str(f) for f in files]}, "
            f"e.g. {missing[:5]}. Run the stage with a model backend first, or point "
            f"options.source at a cache made with the same model_id, template and images."
        )
    return [table[m] for _, m in wanted]
