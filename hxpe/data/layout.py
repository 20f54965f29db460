"""The MVTec AD folder layout, walked once for every dataset that uses it.

``<root>/<cls>/train/<normal>/``, ``<root>/<cls>/test/{<normal>,<defect>...}/`` and
``<root>/<cls>/ground_truth/<defect>/<stem><mask_suffix>.<ext>``. MVTec AD, MPDD, BTAD,
DTD-Synthetic, the prepared KolektorSDD and DAGM trees and the demo data differ only in names (the
normal folder, extensions, the mask suffix), which :class:`LayoutSpec` holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hxpe.data.checks import check_pairs, listing, require_dir
from hxpe.data.errors import DatasetError
from hxpe.data.index import NORMAL_TYPE

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class LayoutSpec:
    """Names that tell one MVTec-style dataset from another."""

    normal_dir: str = "good"
    image_exts: tuple[str, ...] = IMAGE_EXTS
    mask_suffix: str = "_mask"
    ground_truth_dir: str = "ground_truth"
    masks_required: bool = True


@dataclass(frozen=True)
class Entry:
    """One image before hashing: absolute paths, the defect type ``good`` for normal images."""

    cls: str
    split: str
    label: int
    defect_type: str
    image: Path
    mask: Path | None = None


def list_images(folder: Path, exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """Image files of a folder (extension matched case-insensitively), sorted by name."""
    wanted = {e.lower() for e in exts}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in wanted)


def subdirs(folder: Path) -> list[Path]:
    """Sub-folders of a folder, sorted, hidden ones skipped."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def walk_class(root: Path, cls: str, spec: LayoutSpec) -> list[Entry]:
    """Entries of one class folder in MVTec layout (train normals, test normals and defects)."""
    cls_dir = require_dir(root / cls, root, f"class {cls!r}")
    entries: list[Entry] = []
    for split in SPLITS:
        split_dir = require_dir(cls_dir / split, root, f"the {split} split of class {cls!r}")
        folders = subdirs(split_dir)
        if split == "train":
            extra = [f.name for f in folders if f.name != spec.normal_dir]
            if extra:
                raise DatasetError(
                    f"{split_dir} holds {listing(extra)} besides the normal folder "
                    f"{spec.normal_dir!r}; a train split holds normal images only. Move them to "
                    f"test/ or check the dataset kind."
                )
            require_dir(split_dir / spec.normal_dir, root, "normal training images")
        for folder in folders:
            entries.extend(_walk_folder(root, cls, split, folder, spec))
    return entries


def _walk_folder(root: Path, cls: str, split: str, folder: Path, spec: LayoutSpec) -> list[Entry]:
    images = list_images(folder, spec.image_exts)
    if folder.name == spec.normal_dir:
        return [Entry(cls, split, 0, NORMAL_TYPE, img) for img in images]
    gt_dir = root / cls / spec.ground_truth_dir / folder.name
    if not gt_dir.is_dir():
        if spec.masks_required:
            require_dir(gt_dir, root, f"masks of defect type {folder.name!r}")
        return [Entry(cls, split, 1, folder.name, img) for img in images]
    masks = list_images(gt_dir, spec.image_exts)
    pairs = check_pairs(images, masks, spec.mask_suffix, str(gt_dir))
    return [Entry(cls, split, 1, folder.name, img, pairs[img]) for img in images]


def discover_classes(root: Path) -> list[str]:
    """Class folders of an MVTec-style root: sub-folders that hold a folder named exactly ``test``
    (DAGM's raw ``Test`` folders do not count, even on case-insensitive file systems)."""
    return [d.name for d in subdirs(root) if "test" in {s.name for s in subdirs(d)}]


def walk_layout(root: Path, classes: Sequence[str], spec: LayoutSpec) -> list[Entry]:
    """Entries of every class; ``classes`` empty means every class folder found under ``root``."""
    names = list(classes) or discover_classes(root)
    if not names:
        raise DatasetError(
            f"No class folders under {root}: expected <class>/train/{spec.normal_dir} and "
            f"<class>/test/ (MVTec AD layout). Check that --root points at the dataset's top folder."
        )
    return [e for cls in names for e in walk_class(root, cls, spec)]
