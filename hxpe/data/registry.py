"""The dataset kinds: their specs (``datasets.yaml``) and the builder that reads each layout.

Example:
    >>> get_spec("btad").layout.normal_dir
    'ok'
    >>> len(get_spec("mvtec").classes)
    15
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from hxpe.data.builders import build_folder, build_mvtec_layout, build_visa
from hxpe.data.dagm import build_dagm
from hxpe.data.errors import DatasetError
from hxpe.data.ksdd import build_ksdd
from hxpe.data.layout import LayoutSpec
from hxpe.data.spec import Builder, DatasetSpec, ExpectedCounts

SPECS_FILE = Path(__file__).with_name("datasets.yaml")

BUILDERS: dict[str, Builder] = {
    "mvtec": build_mvtec_layout,
    "visa": build_visa,
    "mpdd": build_mvtec_layout,
    "btad": build_mvtec_layout,
    "ksdd": build_ksdd,
    "dagm": build_dagm,
    "dtd": build_mvtec_layout,
    "folder": build_folder,
    "demo": build_mvtec_layout,
}


def _counts(raw: dict[str, Any] | None) -> ExpectedCounts | None:
    if not raw:
        return None
    classes = {str(c): tuple(int(v) for v in row) for c, row in raw["classes"].items()}
    return ExpectedCounts(source=raw["source"], verified=bool(raw["verified"]), classes=classes)


def _spec(kind: str, raw: dict[str, Any]) -> DatasetSpec:
    return DatasetSpec(
        kind=kind,
        title=raw["title"],
        download=raw["download"],
        classes=tuple(str(c) for c in raw.get("classes") or ()),
        layout=LayoutSpec(**(raw.get("layout") or {})),
        counts=_counts(raw.get("counts")),
        notes=" ".join(str(raw.get("notes", "")).split()),
        unpack=str(raw.get("unpack", "")).strip(),
    )


@cache
def load_specs() -> dict[str, DatasetSpec]:
    """Every kind's spec, read once from ``datasets.yaml``."""
    raw = yaml.safe_load(SPECS_FILE.read_text())
    return {kind: _spec(kind, body) for kind, body in raw.items()}


def get_spec(kind: str) -> DatasetSpec:
    """The spec of one dataset kind; an error listing the known kinds otherwise."""
    specs = load_specs()
    if kind not in specs:
        raise DatasetError(f"Unknown dataset kind {kind!r}; known kinds: {', '.join(specs)}.")
    return specs[kind]


def get_builder(kind: str) -> Builder:
    """The index builder of one dataset kind."""
    get_spec(kind)
    return BUILDERS[kind]
