"""Recognise the usual ways a dataset root is wrong and print the command that fixes each.

Three mistakes cover nearly every "wrong layout" report:

* the root points at the **parent** folder (``$HXPE_DATA_ROOT`` instead of
  ``$HXPE_DATA_ROOT/mvtec_anomaly_detection``), or an archive with its own top-level folder was
  unpacked into a folder of the same name (``mvtec_anomaly_detection/mvtec_anomaly_detection/``);
* the root points at **one class folder** (``.../mvtec_anomaly_detection/bottle``);
* the class folders are **scattered** across the data root, because an archive without a top-level
  folder (MVTec AD's ``.tar.xz``, ``VisA_20220922.tar``, ``KolektorSDD.zip``) was unpacked straight
  into it.

Example (MVTec AD's archive unpacked straight into the data root, then the root set to one class):
    >>> from hxpe.data.registry import get_spec
    >>> data = tmp_path / "data"
    >>> for cls in ("bottle", "cable"):
    ...     (data / cls / "train").mkdir(parents=True)
    >>> print(diagnose_root(get_spec("mvtec"), data / "mvtec_anomaly_detection"))
    Dataset root .../data/mvtec_anomaly_detection does not exist, but its parent .../data holds
    class folders of MVTec AD (bottle, cable): the archive has no top-level folder and was unpacked
    straight into the data root. Fix: mkdir -p .../data/mvtec_anomaly_detection && mv
    .../data/bottle .../data/cable .../data/mvtec_anomaly_detection/
    >>> print(diagnose_root(get_spec("mvtec"), data / "bottle"))
    Dataset root .../data/bottle is one class folder of MVTec AD; the root is the folder that holds
    all class folders. Fix: hxpe prepare mvtec --root .../data   (or set the source's root: to
    .../data)
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hxpe.data.checks import listing
from hxpe.data.spec import DatasetSpec

# Folders that sit next to the class folders in an official archive and move with them.
COMPANIONS = {"visa": ("split_csv",)}
# Sub-folders that only a class folder has (MVTec style, VisA, DAGM).
CLASS_MARKERS = ({"train", "test"}, {"Data"}, {"Train", "Test"})


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_class_folder_name(spec: DatasetSpec, name: str) -> bool:
    """Whether ``name`` is one of the dataset's top-level folders (KolektorSDD: ``kosNN``)."""
    if spec.kind == "ksdd" and re.fullmatch(r"kos\d+", name):
        return True
    return name in spec.classes


def _class_folders(spec: DatasetSpec, folder: Path) -> list[Path]:
    return [p for p in _subdirs(folder) if is_class_folder_name(spec, p.name)]


def _looks_like_one_class(spec: DatasetSpec, root: Path) -> bool:
    names = {p.name for p in _subdirs(root)}
    return is_class_folder_name(spec, root.name) or any(m <= names for m in CLASS_MARKERS)


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def diagnose_root(spec: DatasetSpec, root: Path) -> str | None:
    """A message naming the mistake and the command that fixes it; None when the root looks right
    (it holds class folders) or when none of the known mistakes explains what is there."""
    if not spec.classes:  # your own folders and the demo: no fixed class names
        return None
    root = Path(root)
    if _class_folders(spec, root):
        return None
    prepare = f"hxpe prepare {spec.kind} --root"
    if root.is_dir() and _looks_like_one_class(spec, root):
        return (
            f"Dataset root {root} is one class folder of {spec.title}; the root is the folder that "
            f"holds all class folders. Fix: {prepare} {_q(root.parent)}   (or set the source's "
            f"root: to {root.parent})"
        )
    holders = [c for c in _subdirs(root) if _class_folders(spec, c)]
    if len(holders) == 1:
        inner = holders[0]
        if inner.name == root.name:  # an archive with a top-level folder unpacked into its namesake
            return (
                f"Dataset root {root} holds the dataset one level down, in {inner} (the archive "
                f"has its own top-level folder and was unpacked into a folder of the same name). "
                f"Fix: mv {_q(inner)}/* {_q(root)}/ && rmdir {_q(inner)}"
            )
        return (
            f"Dataset root {root} is the parent folder: the class folders of {spec.title} are in "
            f"{inner}. Fix: {prepare} {_q(inner)}   (or set the source's root to {inner})"
        )
    parent = root.parent
    scattered = _class_folders(spec, parent)
    if scattered and not _subdirs(root):
        move = scattered + [
            parent / c for c in COMPANIONS.get(spec.kind, ()) if (parent / c).is_dir()
        ]
        return (
            f"Dataset root {root} {'does not exist' if not root.exists() else 'is empty'}, but its "
            f"parent {parent} holds class folders of {spec.title} "
            f"({listing(p.name for p in scattered)}): the archive has no top-level folder and was "
            f"unpacked straight into the data root. Fix: mkdir -p {_q(root)} && mv "
            f"{' '.join(_q(p) for p in move)} {_q(root)}/"
        )
    return None
