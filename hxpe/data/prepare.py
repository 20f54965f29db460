"""Stage 01 entry points: index one dataset source, or every source of a profile.

Each index directory is built in a hidden sibling (``.<name>.partial``) and renamed into place only
when every check passed, so a failed or interrupted run never leaves a half-written index behind.

Example (the shrunk demo profile: its two generated parts, then their indexes):
    >>> indexes = prepare_all(cfg)
    >>> {name: len(index.frame) for name, index in indexes.items()}
    {'demo_aux': 5, 'demo_target': 10}
    >>> sorted(p.name for p in cfg.layout.index_dir("demo_target").iterdir())
    ['dataset.json', 'index.csv', 'meta.json']
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from hxpe.atomic import OutputKind, check_output_dir, replace_dir
from hxpe.data.authors import split_info
from hxpe.data.checks import require_root
from hxpe.data.config import DatasetSource
from hxpe.data.counts import check_counts
from hxpe.data.demo import generate_demo_dataset
from hxpe.data.diagnose import diagnose_root
from hxpe.data.errors import DatasetError
from hxpe.data.index import DatasetIndex, save_index
from hxpe.data.indexing import entries_to_index
from hxpe.data.registry import get_builder, get_spec
from hxpe.data.spec import BuildRequest, DatasetSpec
from hxpe.paths import resolve

if TYPE_CHECKING:
    from hxpe.config import Config

logger = logging.getLogger(__name__)

KNOWN_OPTIONS = {
    "classes": "restrict to these classes",
    "normal_dir": "name of the normal folder (folder kind; overrides the layout's)",
    "mask_suffix": "mask file suffix before the extension ('_mask' in MVTec AD)",
    "split": "split of a folder dataset's images (default 'test')",
    "cls": "class name of a single-class folder dataset (default: the root folder's name)",
    "link": "DAGM prepared tree: 'symlink' (default) or 'copy'",
    "part": "demo: 'aux' or 'target'",
    "authors_split": "KSDD/DAGM: index the authors' prepared files when found (default true)",
}


def _check_options(source: DatasetSource) -> None:
    unknown = sorted(set(source.options) - set(KNOWN_OPTIONS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in KNOWN_OPTIONS.items())
        raise DatasetError(
            f"Dataset source {source.name!r} has unknown options {unknown}. Known options: {known}."
        )


def source_root(source: DatasetSource, default_root: Path | None = None) -> Path:
    """The first existing of the source's ``prefer_roots``, else its root (relative paths start at
    the repository root), else ``default_root``."""
    for preferred in source.prefer_roots:
        path = resolve(preferred)
        if path.is_dir():
            logger.info("%s: indexing the preferred root %s", source.name, path)
            return path
    if source.root:
        return resolve(source.root)
    if default_root is None:
        raise DatasetError(
            f"Dataset source {source.name!r} ({source.kind}) has no root; set `root:` in the params "
            f"file or pass --root. Download: {get_spec(source.kind).download}"
        )
    return Path(default_root)


# What every index folder holds (save_index): a folder ``hxpe prepare --out`` may replace.
INDEX_OUTPUT = OutputKind("dataset index", ("index.csv", "dataset.json"))


def require_layout(spec: DatasetSpec, root: Path) -> Path:
    """The resolved root, or a DatasetError naming a known unpacking mistake and the fixing command
    (:mod:`hxpe.data.diagnose`), or saying where to download and how to unpack the dataset."""
    problem = diagnose_root(spec, root)
    if problem:
        raise DatasetError(problem)
    hint = f"Download: {spec.download}" + (f". Unpack: {spec.unpack}" if spec.unpack else "")
    return require_root(root, hint).resolve()


def prepare_dataset(
    source: DatasetSource,
    out_dir: Path,
    *,
    allow_count_mismatch: bool = False,
    default_root: Path | None = None,
    force: bool = False,
) -> DatasetIndex:
    """Build, check and save the index of one dataset source into ``out_dir`` (atomically).

    Writes ``index.csv``, ``meta.json`` and ``dataset.json`` (and, for KolektorSDD and DAGM, the
    prepared tree under ``prepared/``) and returns the index, whose ``root`` is final. An existing
    ``out_dir`` must be empty or a previous index, unless ``force``
    (:func:`hxpe.atomic.check_output_dir`).
    """
    check_output_dir(Path(out_dir), INDEX_OUTPUT, force=force)
    _check_options(source)
    spec = get_spec(source.kind)
    root = require_layout(spec, source_root(source, default_root))
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        req = BuildRequest(source.name, root, spec, dict(source.options), staging)
        tree_root, entries = get_builder(source.kind)(req)
        index = entries_to_index(entries, tree_root, source.name, source.kind)
        index.split_source = asdict(split_info(source.kind, root, req.use_authors_split))
        check_counts(index, spec.counts, allow_count_mismatch)
        if tree_root.is_relative_to(staging):
            index.root = out / tree_root.relative_to(staging)
        save_index(index, staging)
        replace_dir(staging, out, INDEX_OUTPUT, force=force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%s: %d images indexed into %s", source.name, len(index.frame), out)
    return index


def prepare_all(cfg: Config) -> dict[str, DatasetIndex]:
    """Stage 01: generate the demo data when the profile asks for it, then index every source.

    Demo sources (kind ``demo``) live in ``results/<profile>/data/<name>`` unless they give a root;
    their ``options["part"]`` (``aux`` or ``target``) picks the part to generate. Indexes go to
    ``results/<profile>/index/<name>``.
    """
    layout = cfg.layout
    indexes: dict[str, DatasetIndex] = {}
    for source in cfg.data.datasets:
        default_root = layout.data_dir(source.name) if source.kind == "demo" else None
        if source.kind == "demo" and cfg.data.demo is not None:
            part = source.options.get("part")
            if part not in ("aux", "target"):
                raise DatasetError(
                    f"Demo source {source.name!r} needs options.part set to 'aux' or 'target' "
                    f"(got {part!r}) in the params file."
                )
            generate_demo_dataset(source_root(source, default_root), part, cfg.data.demo)
        indexes[source.name] = prepare_dataset(
            source,
            layout.index_dir(source.name),
            allow_count_mismatch=cfg.data.allow_count_mismatch,
            default_root=default_root,
        )
    return indexes
