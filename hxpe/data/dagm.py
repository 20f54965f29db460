"""DAGM 2007: balanced normal/defective test sets in a prepared MVTec-style tree of links.

Raw layout: ``<root>/ClassN/{Train,Test}/NNNN.PNG`` with ``Label/NNNN_label.PNG`` for the defective
images only (and a ``Labels.txt`` we do not need). An image is defective when it has a label image.
As AdaCLIP's ``dagm-pre.py`` does, within each original part (Train, Test) the first N normal images
(N = the part's number of defective images) go to ``test/good`` and the rest to ``train/good``; all
defective images go to ``test/defect``. We sort the files first and prefix every file with its part
(``train_0001.PNG``, ``test_0001.PNG``): AdaCLIP merges both parts into one folder, so equal file names
overwrite each other there. The prepared tree holds symbolic links to the raw files
(``options["link"]: "copy"`` copies instead). The authors' files are detected and indexed as they are
(:mod:`hxpe.data.authors`): AdaCLIP's prepared ``DAGM_anomaly_detection`` tree (masks
``NNNN_label.PNG``) and AnomalyCLIP's ``meta.json`` over the raw tree (the whole original Test part, a
different protocol). Any other prepared MVTec-style tree is indexed as it is.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from hxpe.data.authors import detect_prepared, entries_from_meta
from hxpe.data.checks import check_pairs, require_dir
from hxpe.data.layout import discover_classes, list_images, walk_layout
from hxpe.data.spec import BuildRequest, BuildResult
from hxpe.progress import progress

logger = logging.getLogger(__name__)

PARTS = ("Train", "Test")
LABEL_DIR = "Label"
LABEL_SUFFIX = "_label"
DEFECT_TYPE = "defect"


def split_part(part_dir: Path) -> dict[str, list[tuple[Path, Path | None]]]:
    """AdaCLIP's rule for one part: ``{"train/good": ..., "test/good": ..., "test/defect": ...}``."""
    images = list_images(part_dir)
    labels = list_images(part_dir / LABEL_DIR) if (part_dir / LABEL_DIR).is_dir() else []
    label_stems = {p.stem[: -len(LABEL_SUFFIX)] for p in labels if p.stem.endswith(LABEL_SUFFIX)}
    defective = [p for p in images if p.stem in label_stems]
    pairs = check_pairs(defective, labels, LABEL_SUFFIX, str(part_dir / LABEL_DIR))
    normal = [p for p in images if p.stem not in label_stems]
    n = len(defective)
    return {
        "train/good": [(p, None) for p in normal[n:]],
        "test/good": [(p, None) for p in normal[:n]],
        f"test/{DEFECT_TYPE}": [(p, pairs[p]) for p in defective],
    }


def _place(src: Path, dst: Path, link: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link == "copy":
        shutil.copyfile(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def prepare_dagm_tree(raw_root: Path, out_root: Path, classes: tuple[str, ...], link: str) -> Path:
    """Write the prepared tree (links or copies) of the raw DAGM classes into ``out_root``."""
    for cls in progress(classes, desc="DAGM: preparing classes", unit="class"):
        cls_dir = require_dir(raw_root / cls, raw_root, f"class {cls!r}")
        for part in PARTS:
            part_dir = require_dir(cls_dir / part, raw_root, f"the {part} part of {cls}")
            prefix = part.lower()
            for target, items in split_part(part_dir).items():
                for image, label in items:
                    name = f"{prefix}_{image.name}"
                    _place(image, out_root / cls / target / name, link)
                    if label is not None:
                        mask = f"{prefix}_{image.stem}_mask{label.suffix}"
                        _place(label, out_root / cls / "ground_truth" / DEFECT_TYPE / mask, link)
    return out_root


def build_dagm(req: BuildRequest) -> BuildResult:
    """Index the authors' DAGM files (from their ``meta.json``, :mod:`hxpe.data.authors`), an already
    prepared MVTec-style tree (AdaCLIP's ``NNNN_label.PNG`` masks pair by stem), or raw DAGM 2007
    (prepared into ``work_dir``)."""
    found = detect_prepared(req.root, "dagm") if req.use_authors_split else None
    if found is not None and found.meta is not None:
        return req.root, entries_from_meta(req.root, found.meta, req.options.get("classes", ()))
    if discover_classes(req.root):
        return req.root, walk_layout(req.root, req.options.get("classes", ()), req.layout)
    link = req.options.get("link", "symlink")
    tree = prepare_dagm_tree(req.root, req.work_dir / "prepared", req.classes, link)
    return tree, walk_layout(tree, req.classes, req.layout)
