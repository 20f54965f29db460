"""Index builders for layouts that need no restructuring: MVTec-style trees, VisA and plain folders.

A builder reads a raw dataset and returns ``(root, entries)``: the root the index paths are relative
to and one :class:`~hxpe.data.layout.Entry` per image. Checks on image content, hashing and counts
happen afterwards, once, in :mod:`hxpe.data.indexing` and :mod:`hxpe.data.prepare`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from hxpe.data.checks import check_pairs, listing, require_dir, safe_join
from hxpe.data.errors import DatasetError
from hxpe.data.index import NORMAL_TYPE
from hxpe.data.layout import Entry, LayoutSpec, list_images, subdirs, walk_layout
from hxpe.data.spec import BuildRequest, BuildResult

logger = logging.getLogger(__name__)

VISA_SPLIT_CSV = "split_csv/1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_ANOMALY_TYPE = "anomaly"
NORMAL_DIR_NAMES = ("good", "ok", "normal", "nominal")
MASK_DIR_NAMES = ("ground_truth", "masks")


def build_mvtec_layout(req: BuildRequest) -> BuildResult:
    """MVTec AD, MPDD, BTAD, DTD-Synthetic, the demo data: walk the MVTec layout."""
    return req.root, walk_layout(req.root, req.classes, req.layout)


def build_visa(req: BuildRequest) -> BuildResult:
    """VisA from ``split_csv/1cls.csv`` (columns object, split, label, image, mask; paths from root)."""
    csv_path = req.root / VISA_SPLIT_CSV
    if not csv_path.is_file():
        raise DatasetError(
            f"VisA split file {csv_path} is missing: VisA is indexed from the official "
            f"{VISA_SPLIT_CSV}. Unpack the full release ({req.spec.download})."
        )
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in VISA_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{csv_path} lacks columns {missing}; expected {list(VISA_COLUMNS)}. Restore the "
            f"official file."
        )
    wanted = set(req.classes)
    absent = sorted(wanted - set(table["object"]))
    if absent:
        raise DatasetError(
            f"{csv_path} has no rows for classes {absent}; restore the official file."
        )
    entries = []
    for n, row in enumerate(table.itertuples(index=False), start=2):
        if row.object not in wanted:
            continue
        where = f"{csv_path}, line {n}"
        if row.label not in ("normal", "anomaly"):
            raise DatasetError(f"{where}: label {row.label!r} is neither 'normal' nor 'anomaly'.")
        image = safe_join(req.root, row.image, where)
        label = int(row.label == "anomaly")
        mask = safe_join(req.root, row.mask, where) if label and row.mask else None
        for path in (image, mask):
            if path is not None and not path.is_file():
                raise DatasetError(
                    f"{where} names {path}, which does not exist. Re-extract the VisA archive "
                    f"under {req.root}."
                )
        defect = VISA_ANOMALY_TYPE if label else NORMAL_TYPE
        entries.append(Entry(row.object, row.split, label, defect, image, mask))
    return req.root, entries


def find_normal_dir(folder: Path, given: str | None) -> str:
    """The normal sub-folder of a folder dataset class: ``given`` or one of good/ok/normal/nominal."""
    names = [d.name for d in subdirs(folder)]
    if given:
        if given not in names:
            raise DatasetError(
                f"Normal folder {given!r} not found in {folder}; it holds {listing(names)}. Pass "
                f"the right --normal-dir."
            )
        return given
    found = [n for n in names if n.lower() in NORMAL_DIR_NAMES]
    if len(found) != 1:
        what = "no folder" if not found else f"several folders ({listing(found)})"
        raise DatasetError(
            f"{folder}: found {what} named like a normal folder ({'/'.join(NORMAL_DIR_NAMES)}); "
            f"it holds {listing(names) or 'nothing'}. Pass --normal-dir NAME."
        )
    return found[0]


def build_folder(req: BuildRequest) -> BuildResult:
    """A user's folder: ``<root>/<normal>/`` + ``<root>/<defect>/`` (one class) or one such folder per
    class. Masks are optional (``ground_truth/<defect>/<stem>[_mask].<ext>``); every image goes to
    the ``split`` option's split (default ``test``: a zero-shot target)."""
    root = req.root
    given = req.options.get("normal_dir")
    split = req.options.get("split", "test")
    candidates = [d.name for d in subdirs(root)]
    is_single = given in candidates or any(n.lower() in NORMAL_DIR_NAMES for n in candidates)
    if is_single:
        classes = {req.options.get("cls") or root.name: root}
    else:
        classes = {c: root / c for c in (req.classes or tuple(candidates))}
    if not classes:
        raise DatasetError(
            f"{root} holds no sub-folders: a folder dataset needs <root>/<normal>/ and "
            f"<root>/<defect_type>/ (or one such folder per class)."
        )
    entries: list[Entry] = []
    for cls, folder in classes.items():
        require_dir(folder, root, f"class {cls!r}")
        entries.extend(_folder_class(cls, folder, find_normal_dir(folder, given), split, req))
    return root, entries


def _folder_class(
    cls: str, folder: Path, normal: str, split: str, req: BuildRequest
) -> list[Entry]:
    layout: LayoutSpec = req.layout
    mask_root = next((folder / m for m in MASK_DIR_NAMES if (folder / m).is_dir()), None)
    entries = [Entry(cls, split, 0, NORMAL_TYPE, p) for p in list_images(folder / normal)]
    for sub in subdirs(folder):
        if sub.name == normal or sub.name in MASK_DIR_NAMES:
            continue
        images = list_images(sub, layout.image_exts)
        masks_dir = mask_root / sub.name if mask_root is not None else None
        if masks_dir is not None and masks_dir.is_dir():
            pairs = check_pairs(images, list_images(masks_dir), layout.mask_suffix, str(masks_dir))
        else:
            pairs = {}
            logger.info("%s/%s: no masks; only image-level metrics apply", cls, sub.name)
        entries.extend(Entry(cls, split, 1, sub.name, p, pairs.get(p)) for p in images)
    if not any(e.label for e in entries):
        logger.warning("%s: no defect folders next to %r; all images are normal", folder, normal)
    return entries
