"""What a dataset kind is (:class:`DatasetSpec`) and what a builder is given (:class:`BuildRequest`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hxpe.data.layout import Entry, LayoutSpec

COUNT_COLUMNS = ("train_normal", "test_normal", "test_anomalous")
LAYOUT_OPTIONS = ("normal_dir", "mask_suffix")


@dataclass(frozen=True)
class ExpectedCounts:
    """Per-class counts of an official release, with where they come from."""

    source: str
    verified: bool
    classes: dict[str, tuple[int, int, int]]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset kind: its names, layout, download hint and expected counts (``datasets.yaml``)."""

    kind: str
    title: str
    download: str
    classes: tuple[str, ...] = ()
    layout: LayoutSpec = field(default_factory=LayoutSpec)
    counts: ExpectedCounts | None = None
    notes: str = ""
    unpack: str = ""  # the shell command that unpacks the official archive under $HXPE_DATA_ROOT


@dataclass(frozen=True)
class SplitInfo:
    """Where an index's train/test split comes from, for the result tables.

    ``source``: ``official`` (the release's), ``authors`` (a method's authors' prepared files),
    ``rebuilt`` (from raw data with our sorted listing), ``prepared`` (a prepared tree of unknown
    origin) or ``generated`` (demo); ``text`` says it in words, ``note`` what it is comparable with.
    """

    source: str
    text: str
    note: str = ""


@dataclass(frozen=True)
class BuildRequest:
    """A builder's input: the dataset's name, raw root, kind and options, and a scratch folder.

    ``work_dir`` lies inside the index directory being built; builders that restructure raw data
    (KolektorSDD, DAGM) write their prepared MVTec-style tree there and index that tree.
    """

    name: str
    root: Path
    spec: DatasetSpec
    options: dict[str, Any]
    work_dir: Path

    @property
    def classes(self) -> tuple[str, ...]:
        """``options["classes"]`` when given (a subset), else the kind's class list."""
        return tuple(self.options.get("classes") or self.spec.classes)

    @property
    def use_authors_split(self) -> bool:
        """``options["authors_split"]`` (default true): index the authors' prepared files when found."""
        return bool(self.options.get("authors_split", True))

    @property
    def layout(self) -> LayoutSpec:
        """The kind's layout with ``options["normal_dir"]`` / ``options["mask_suffix"]`` applied."""
        overrides = {k: self.options[k] for k in LAYOUT_OPTIONS if k in self.options}
        return replace(self.spec.layout, **overrides)


BuildResult = tuple[Path, list[Entry]]
Builder = Callable[[BuildRequest], BuildResult]
