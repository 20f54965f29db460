"""KolektorSDD (v1): cut every image into three bands and write a prepared MVTec-style tree.

Raw layout: ``<root>/kosNN/PartK.jpg`` with ``PartK_label.bmp``. Each image is cut into three equal
horizontal bands (AdaCLIP's ``sdd-pre.py`` calls them vertical crops); a band with any label pixel is
a test anomaly (``test/defect`` + ``ground_truth/defect/<stem>_mask.png``), the normal bands are split
75/25 into train/test with ``train_test_split(random_state=42)``. We sort the files first, so the
split does not depend on the file system's listing order as AdaCLIP's does (so it is not AdaCLIP's file
for file). AnomalyCLIP's released SDD split differs (181 normal / 74 anomalous test images). The
authors' prepared trees (AdaCLIP's ``SDD_anomaly_detection``, AnomalyCLIP's ``SDD``) are detected and
indexed from their ``meta.json`` (:mod:`hxpe.data.authors`); any other prepared MVTec-style tree
(``<cls>/train/good``, ``<cls>/test``...) is indexed as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from hxpe.data.authors import detect_prepared, entries_from_meta
from hxpe.data.checks import listing
from hxpe.data.errors import DatasetError
from hxpe.data.layout import discover_classes, subdirs, walk_layout
from hxpe.data.spec import BuildRequest, BuildResult
from hxpe.progress import progress

logger = logging.getLogger(__name__)

N_BANDS = 3
TEST_FRACTION = 0.25
SPLIT_SEED = 42
LABEL_SUFFIX = "_label"
DEFECT_TYPE = "defect"


def band_bounds(height: int, n: int = N_BANDS) -> list[tuple[int, int]]:
    """Row ranges of ``n`` bands, as ``sdd-pre.py`` cuts them.

    >>> band_bounds(10)
    [(0, 3), (3, 6), (6, 10)]
    """
    edges = [height * k // n for k in range(n)] + [height]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _raw_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """(crop stem prefix, image, label) for every part image, sorted; unpaired files are errors."""
    folders = [d for d in subdirs(root) if d.name.lower().startswith("kos")]
    if not folders:
        raise DatasetError(
            f"{root} is neither a raw KolektorSDD folder (kos01/ ... kos50/ with PartK.jpg and "
            f"PartK_label.bmp) nor a prepared MVTec-style tree (<class>/train/good, <class>/test). "
            f"Point --root at the unpacked KolektorSDD folder."
        )
    pairs, lonely = [], []
    for folder in folders:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")
        for img in images:
            label = folder / f"{img.stem}{LABEL_SUFFIX}.bmp"
            if label.is_file():
                pairs.append((f"{folder.name}_{img.stem}", img, label))
            else:
                lonely.append(f"{folder.name}/{img.name}")
    if lonely:
        raise DatasetError(
            f"KolektorSDD images without their <stem>{LABEL_SUFFIX}.bmp label under {root}: "
            f"{listing(lonely)}. Re-extract KolektorSDD.zip."
        )
    return pairs


def _read(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"Cannot read {path}: {err}. Re-extract KolektorSDD.zip.") from err


def _bands(img_path: Path, label_path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    image, label = _read(img_path), _read(label_path)
    if image.shape[:2] != label.shape[:2]:
        raise DatasetError(
            f"{label_path} is {label.shape[1]}x{label.shape[0]} but {img_path} is "
            f"{image.shape[1]}x{image.shape[0]}; a label must have its image's size."
        )
    bounds = band_bounds(image.shape[0])
    return [image[a:b] for a, b in bounds], [label[a:b] for a, b in bounds]


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def prepare_ksdd_tree(raw_root: Path, out_root: Path, cls: str) -> Path:
    """Write the prepared MVTec-style tree of a raw KolektorSDD folder into ``out_root``."""
    # sklearn is imported here, not at module level: `import hxpe.config` imports hxpe.data.
    from sklearn.model_selection import train_test_split

    pairs = _raw_pairs(raw_root)
    cls_dir = out_root / cls
    normal_bands: list[tuple[str, Path, Path, int]] = []
    for prefix, img, label in progress(pairs, desc="KolektorSDD: defective bands", unit="img"):
        images, labels = _bands(img, label)
        for k, (band, lab) in enumerate(zip(images, labels, strict=True)):
            stem = f"{prefix}_{k}"
            if np.any(lab):
                _save(band, cls_dir / "test" / DEFECT_TYPE / f"{stem}.png")
                mask = (np.asarray(lab).reshape(lab.shape[:2] + (-1,))[..., 0] > 0) * 255
                _save(
                    mask.astype(np.uint8),
                    cls_dir / "ground_truth" / DEFECT_TYPE / f"{stem}_mask.png",
                )
            else:
                normal_bands.append((stem, img, label, k))
    train, test = train_test_split(normal_bands, test_size=TEST_FRACTION, random_state=SPLIT_SEED)
    for split, chosen in (("train", train), ("test", test)):
        for stem, img, label, k in progress(
            chosen, desc=f"KolektorSDD: {split} normals", unit="band"
        ):
            _save(_bands(img, label)[0][k], cls_dir / split / "good" / f"{stem}.png")
    logger.info(
        "KolektorSDD: %d defective, %d train and %d test normal bands written to %s",
        sum(1 for _ in (cls_dir / "test" / DEFECT_TYPE).glob("*.png")),
        len(train),
        len(test),
        cls_dir,
    )
    return out_root


def build_ksdd(req: BuildRequest) -> BuildResult:
    """Index the authors' prepared KSDD (from its ``meta.json``, :mod:`hxpe.data.authors`), an
    already prepared tree, or a raw KolektorSDD folder (prepared into ``work_dir``)."""
    found = detect_prepared(req.root, "ksdd") if req.use_authors_split else None
    if found is not None and found.meta is not None:
        return req.root, entries_from_meta(req.root, found.meta, req.options.get("classes", ()))
    if discover_classes(req.root):
        return req.root, walk_layout(req.root, req.options.get("classes", ()), req.layout)
    cls = req.classes[0] if req.classes else "electrical_commutators"
    tree = prepare_ksdd_tree(req.root, req.work_dir / "prepared", cls)
    return tree, walk_layout(tree, (cls,), req.layout)
