"""Small trees in each benchmark's *raw* on-disk layout, for the paper-path dry run and tests.

The images are the demo generator's (real photos and drawn objects with planted defects and masks),
re-laid out with each dataset's own names and quirks: MVTec/MPDD/DTD folders, BTAD's ``ok``/``ko``
and mixed extensions, VisA's ``split_csv/1cls.csv`` and small-integer masks, KolektorSDD's tall
``kosNN/PartK.jpg`` with ``PartK_label.bmp``, DAGM's ``ClassN/{Train,Test}`` with ``Label/*_label.PNG``.
:func:`write_prepared_fixture` lays out the authors' prepared KSDD/DAGM trees and meta files in their
exact naming (AdaCLIP's ``SDD_anomaly_detection``/``DAGM_anomaly_detection``, AnomalyCLIP's ``SDD`` and
DAGM ``meta.json``). They exercise the real index builders (``hxpe prepare``) without the real
downloads.

Example (BTAD's layout from two small demo classes):
    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> small = DemoDataConfig(
    ...     image_size=64, target_classes=["gravel", "bracket"], n_train_good=1, n_test_good=1
    ... )
    >>> demo_root = generate_demo_dataset(tmp / "demo", "target", small)
    >>> write_raw_fixture("btad", tmp / "btad", demo_root)
    ['01', '02']
    >>> sorted(p.name for p in (tmp / "btad" / "01").iterdir())
    ['ground_truth', 'test', 'train']
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from hxpe.data.config import DemoDataConfig
from hxpe.data.demo import generate_demo_dataset
from hxpe.data.index import NORMAL_TYPE, DatasetIndex, make_image_id, validate_frame
from hxpe.data.registry import get_spec
from hxpe.hashing import file_sha256

RAW_KINDS = ("mvtec", "visa", "mpdd", "btad", "ksdd", "dagm", "dtd")


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None = None
    defect: str = "good"


def demo_samples(demo_root: Path) -> dict[str, dict[str, list[Sample]]]:
    """Per demo class: ``train`` normals, ``good`` test normals and ``defect`` test anomalies."""
    out: dict[str, dict[str, list[Sample]]] = {}
    for cls_dir in sorted(p for p in demo_root.iterdir() if p.is_dir()):
        train = [Sample(p) for p in sorted((cls_dir / "train" / "good").glob("*.png"))]
        good = [Sample(p) for p in sorted((cls_dir / "test" / "good").glob("*.png"))]
        defects = []
        for d in sorted(p for p in (cls_dir / "test").iterdir() if p.name != "good"):
            for img in sorted(d.glob("*.png")):
                mask = cls_dir / "ground_truth" / d.name / f"{img.stem}_mask.png"
                defects.append(Sample(img, mask, d.name))
        out[cls_dir.name] = {"train": train, "good": good, "defect": defects}
    return out


def _save(src: Path, dst: Path, mode: str = "RGB", scale_mask: int | None = None) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert(mode)
        if scale_mask is not None:
            arr = (np.asarray(im) > 0).astype(np.uint8) * scale_mask
            im = Image.fromarray(arr)
        im.save(dst)


def _cycle(pool: dict[str, dict[str, list[Sample]]], classes: list[str]):
    """Pair each fixture class with a demo class, cycling through the demo classes."""
    return zip(classes, itertools.cycle(pool.values()), strict=False)


def _mvtec_like(root, pool, classes, normal="good", defect_dir=None, image_ext=".png", n=(2, 1, 1)):
    n_train, n_good, n_defect = n
    for k, (cls, src) in enumerate(_cycle(pool, classes)):
        ext = image_ext if isinstance(image_ext, str) else image_ext[k % len(image_ext)]
        for i, s in enumerate(src["train"][:n_train]):
            _save(s.image, root / cls / "train" / normal / f"{i:03d}{ext}")
        for i, s in enumerate(src["good"][:n_good]):
            _save(s.image, root / cls / "test" / normal / f"{i:03d}{ext}")
        for i, s in enumerate(src["defect"][:n_defect]):
            folder = defect_dir or s.defect
            _save(s.image, root / cls / "test" / folder / f"{i:03d}{ext}")
            suffix = "" if defect_dir else "_mask"
            _save(s.mask, root / cls / "ground_truth" / folder / f"{i:03d}{suffix}.png", "L")


def _visa(root, pool, classes, n=(2, 1, 1)):
    rows = []
    for cls, src in _cycle(pool, classes):
        k = 0
        for split, samples in (("train", src["train"][: n[0]]), ("test", src["good"][: n[1]])):
            for s in samples:
                rel = f"{cls}/Data/Images/Normal/{k:04d}.JPG"
                _save(s.image, root / rel)
                rows.append((cls, split, "normal", rel, ""))
                k += 1
        for i, s in enumerate(src["defect"][: n[2]]):
            rel, mrel = (
                f"{cls}/Data/Images/Anomaly/{i:03d}.JPG",
                f"{cls}/Data/Masks/Anomaly/{i:03d}.png",
            )
            _save(s.image, root / rel)
            _save(s.mask, root / mrel, "L", scale_mask=1)  # VisA masks hold small integers
            rows.append((cls, "test", "anomaly", rel, mrel))
    csv = root / "split_csv" / "1cls.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["object", "split", "label", "image", "mask"]).to_csv(
        csv, index=False
    )


def _ksdd(root, pool, n_parts: int = 4):
    """Tall grey ``PartK.jpg`` made of three demo images stacked; one band of some parts defective."""
    samples = [s for src in pool.values() for s in src["good"] + src["train"]]
    defects = [s for src in pool.values() for s in src["defect"]]
    for k in range(n_parts):
        folder = root / f"kos{k // 2 + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        bands, labels = [], []
        for b in range(3):
            s = defects[k] if (b == 1 and k % 2 == 0) else samples[(3 * k + b) % len(samples)]
            with Image.open(s.image) as im:
                bands.append(np.asarray(im.convert("L")))
            if s.mask is not None:
                with Image.open(s.mask) as m:
                    labels.append((np.asarray(m.convert("L")) > 0).astype(np.uint8) * 255)
            else:
                labels.append(np.zeros_like(bands[-1]))
        Image.fromarray(np.vstack(bands)).save(folder / f"Part{k % 2}.jpg")
        Image.fromarray(np.vstack(labels)).save(folder / f"Part{k % 2}_label.bmp")


def _dagm(root, pool, classes, n_normal: int = 3, n_defect: int = 1):
    for cls, src in _cycle(pool, classes):
        normals = src["train"] + src["good"]
        for part, offset in (("Train", 0), ("Test", 1)):
            label_dir = root / cls / part / "Label"
            label_dir.mkdir(parents=True, exist_ok=True)
            names = []
            for i, s in enumerate(normals[offset : offset + n_normal], start=1):
                _save(s.image, root / cls / part / f"{i:04d}.PNG", "L")
            for j, s in enumerate(src["defect"][offset : offset + n_defect], start=n_normal + 1):
                _save(s.image, root / cls / part / f"{j:04d}.PNG", "L")
                _save(s.mask, label_dir / f"{j:04d}_label.PNG", "L", scale_mask=255)
                names.append(f"{j:04d}")
            (label_dir / "Labels.txt").write_text("\n".join(names) + "\n")


# --------------------------------------------------------------------------------------------------
# The authors' prepared trees (hxpe.data.authors), in their exact naming
# --------------------------------------------------------------------------------------------------

PREPARED_LAYOUTS = ("adaclip_ksdd", "adaclip_dagm", "anomalyclip_ksdd", "anomalyclip_dagm")


def _record(img: str, mask: str, cls: str, specie: str, anomaly: int) -> dict:
    return {
        "img_path": img,
        "mask_path": mask,
        "cls_name": cls,
        "specie_name": specie,
        "anomaly": anomaly,
    }


def _tree_meta(root: Path, classes: list[str]) -> dict:
    """The ``meta.json`` AdaCLIP's data_preprocess/{sdd,dagm}.py (and AnomalyCLIP's SDD.py) write for
    a prepared tree: per split and defect folder, images and masks each sorted and paired by
    position."""
    meta: dict[str, dict[str, list[dict]]] = {"train": {}, "test": {}}
    for cls in classes:
        for phase in ("train", "test"):
            records = []
            phase_dir = root / cls / phase
            species = sorted(d.name for d in phase_dir.iterdir()) if phase_dir.is_dir() else []
            for specie in species:
                abnormal = specie != "good"
                images = sorted(p.name for p in (phase_dir / specie).iterdir())
                gt = root / cls / "ground_truth" / specie
                masks = sorted(p.name for p in gt.iterdir()) if abnormal else []
                for k, img in enumerate(images):
                    mask = f"{cls}/ground_truth/{specie}/{masks[k]}" if abnormal else ""
                    records.append(
                        _record(f"{cls}/{phase}/{specie}/{img}", mask, cls, specie, int(abnormal))
                    )
            meta[phase][cls] = records
    return meta


def _write_meta(root: Path, meta: dict) -> None:
    (root / "meta.json").write_text(json.dumps(meta, indent=4) + "\n")


def _adaclip_ksdd(root: Path, pool) -> list[str]:
    """``SDD/{train/good, test/good, test/defect, ground_truth/defect/<stem>_mask.png}`` with band
    names ``kosNN_PartK_B.png``, as sdd-pre.py writes them."""
    normals = [s for src in pool.values() for s in src["train"] + src["good"]]
    defects = [s for src in pool.values() for s in src["defect"]]
    for i, s in enumerate(normals[:4]):
        split = "train" if i < 2 else "test"
        _save(s.image, root / "SDD" / split / "good" / f"kos{i + 2:02d}_Part0_{i % 3}.png", "L")
    for i, s in enumerate(defects[:2]):
        stem = f"kos01_Part{i}_1"
        _save(s.image, root / "SDD" / "test" / "defect" / f"{stem}.png", "L")
        _save(s.mask, root / "SDD" / "ground_truth" / "defect" / f"{stem}_mask.png", "L", 255)
    return ["SDD"]


def _adaclip_dagm(root: Path, pool, classes: list[str]) -> list[str]:
    """``ClassN/{train/good, test/good, test/defect}/NNNN.PNG`` with masks
    ``ground_truth/defect/NNNN_label.PNG``, as dagm-pre.py writes them."""
    for cls, src in _cycle(pool, classes):
        normals = src["train"] + src["good"]
        for i, s in enumerate(normals[:3], start=1):
            split = "train" if i > 1 else "test"
            _save(s.image, root / cls / split / "good" / f"{i:04d}.PNG", "L")
        for j, s in enumerate(src["defect"][:2], start=7):
            _save(s.image, root / cls / "test" / "defect" / f"{j:04d}.PNG", "L")
            _save(s.mask, root / cls / "ground_truth" / "defect" / f"{j:04d}_label.PNG", "L", 255)
    return classes


def _anomalyclip_ksdd(root: Path, pool) -> list[str]:
    """AnomalyCLIP's released ``SDD``: ``electrical_commutators/test/{good, defect}`` only."""
    cls = "electrical_commutators"
    normals = [s for src in pool.values() for s in src["good"]]
    defects = [s for src in pool.values() for s in src["defect"]]
    for i, s in enumerate(normals[:2]):
        _save(s.image, root / cls / "test" / "good" / f"kos0{i + 1}_Part0_0.png", "L")
    for i, s in enumerate(defects[:2]):
        stem = f"kos01_Part5_{i}"
        _save(s.image, root / cls / "test" / "defect" / f"{stem}.png", "L")
        _save(s.mask, root / cls / "ground_truth" / "defect" / f"{stem}_mask.png", "L", 255)
    return [cls]


def anomalyclip_dagm_meta(raw_root: Path, classes: list[str]) -> dict:
    """The ``meta.json`` AnomalyCLIP's generate_dataset_json/DAGM.py writes over the raw DAGM tree:
    splits ``Train``/``Test`` are the original parts, whole; normal images first, then defective."""
    meta: dict[str, dict[str, list[dict]]] = {"Train": {}, "Test": {}}
    for cls in classes:
        for phase in ("Train", "Test"):
            part = raw_root / cls / phase
            images = sorted(p.name for p in part.iterdir() if p.name.endswith(".PNG"))
            labels = sorted(p.name for p in (part / "Label").iterdir() if p.name.endswith(".PNG"))
            defective = [f"{m.split('_')[0]}.PNG" for m in labels]
            normal = sorted(set(images) - set(defective))
            records = [_record(f"{cls}/{phase}/{n}", "", cls, "", 0) for n in normal]
            records += [
                _record(f"{cls}/{phase}/{img}", f"{cls}/{phase}/Label/{m}", cls, "", 1)
                for img, m in zip(defective, labels, strict=True)
            ]
            meta[phase][cls] = records
    return meta


def write_prepared_fixture(
    layout: str, root: Path, demo_root: Path, *, with_meta: bool = True, n_classes: int = 2
) -> list[str]:
    """A small tree laid out as an author's prepared KSDD or DAGM (``PREPARED_LAYOUTS``) under
    ``root``, with its ``meta.json`` unless ``with_meta`` is false; returns the classes.

    ``anomalyclip_dagm`` is the raw DAGM fixture plus AnomalyCLIP's meta file over it.
    """
    pool = demo_samples(demo_root)
    dagm_classes = list(get_spec("dagm").classes[:n_classes])
    if layout == "adaclip_ksdd":
        classes = _adaclip_ksdd(root, pool)
    elif layout == "adaclip_dagm":
        classes = _adaclip_dagm(root, pool, dagm_classes)
    elif layout == "anomalyclip_ksdd":
        classes = _anomalyclip_ksdd(root, pool)
    elif layout == "anomalyclip_dagm":
        _dagm(root, pool, dagm_classes)
        if with_meta:
            _write_meta(root, anomalyclip_dagm_meta(root, dagm_classes))
        return dagm_classes
    else:
        raise ValueError(f"No prepared fixture {layout!r}; layouts: {PREPARED_LAYOUTS}")
    if with_meta:
        _write_meta(root, _tree_meta(root, classes))
    return classes


def write_raw_fixture(kind: str, root: Path, demo_root: Path, n_classes: int = 2) -> list[str]:
    """Write a small ``kind`` tree in its raw layout under ``root``; return the classes written."""
    pool = demo_samples(demo_root)
    spec = get_spec(kind)
    classes = list(spec.classes[:n_classes])
    if kind in ("mvtec", "mpdd", "dtd"):
        _mvtec_like(root, pool, classes)
    elif kind == "btad":
        _mvtec_like(root, pool, classes, normal="ok", defect_dir="ko", image_ext=(".bmp", ".png"))
    elif kind == "visa":
        _visa(root, pool, classes)
    elif kind == "ksdd":
        _ksdd(root, pool)
        classes = list(spec.classes)
    elif kind == "dagm":
        _dagm(root, pool, classes)
    else:
        raise ValueError(f"No raw fixture for kind {kind!r}; kinds: {RAW_KINDS}")
    return classes


def write_all_fixtures(out: Path, *, image_size: int = 128, n_classes: int = 2) -> dict[str, Path]:
    """A raw-layout fixture tree for each of the seven benchmarks under ``out/<kind>``."""
    demo_root = generate_demo_dataset(
        out / "_demo_source", "aux", DemoDataConfig(image_size=image_size)
    )
    return {
        kind: (write_raw_fixture(kind, out / kind, demo_root, n_classes), out / kind)[1]
        for kind in RAW_KINDS
    }


class IndexWriter:
    """Writes small images (and masks) into an MVTec-layout tree and indexes them, for tests.

    Images go to ``<cls>/<split>/<defect>/<stem>.png``, masks to
    ``<cls>/ground_truth/<defect>/<stem>_mask.png``; a row is anomalous when ``defect`` is not
    ``good``. :meth:`index` returns the rows as a validated :class:`DatasetIndex` (canonical order,
    SHA-256 of every image), as stage 01 would.

    Example:
        >>> import tempfile
        >>> writer = IndexWriter(Path(tempfile.mkdtemp()), "toy")
        >>> writer.add("widget", "train", "good", "000", np.zeros((8, 8, 3), np.uint8))
        'toy/widget/train/good/000'
        >>> spot = np.zeros((8, 8), np.uint8)
        >>> spot[2:4, 2:4] = 255
        >>> writer.add("widget", "test", "spot", "000", np.zeros((8, 8, 3), np.uint8), mask=spot)
        'toy/widget/test/spot/000'
        >>> writer.index().frame[["split", "label", "mask"]].values.tolist()
        [['test', 1, 'widget/ground_truth/spot/000_mask.png'], ['train', 0, '']]
    """

    def __init__(self, root: Path, dataset: str, kind: str = "mvtec") -> None:
        self.root = Path(root)
        self.dataset = dataset
        self.kind = kind
        self.rows: list[dict[str, object]] = []

    def add(
        self,
        cls: str,
        split: str,
        defect: str,
        stem: str,
        image: np.ndarray | Image.Image,
        mask: np.ndarray | Image.Image | None = None,
    ) -> str:
        """Write one image (and its mask) and add its row; returns the ``image_id``."""
        rel = f"{cls}/{split}/{defect}/{stem}.png"
        _write_png(image, self.root / rel)
        mask_rel = ""
        if mask is not None:
            mask_rel = f"{cls}/ground_truth/{defect}/{stem}_mask.png"
            _write_png(mask, self.root / mask_rel)
        image_id = make_image_id(self.dataset, cls, split, defect, rel)
        self.rows.append(
            {
                "image_id": image_id,
                "dataset": self.dataset,
                "cls": cls,
                "split": split,
                "label": int(defect != NORMAL_TYPE),
                "defect_type": defect,
                "image": rel,
                "mask": mask_rel,
                "sha256": file_sha256(self.root / rel),
            }
        )
        return image_id

    def index(self) -> DatasetIndex:
        """Everything added so far, as a validated index."""
        frame = validate_frame(pd.DataFrame(self.rows))
        return DatasetIndex(name=self.dataset, root=self.root, frame=frame, kind=self.kind)


# -- planted defects on a real photo (the agent's examples and tests) -------------------------------
def texture_crop(y: int, x: int, size: int = 128) -> Image.Image:
    """A ``size`` px crop of the brick photo at half resolution, starting at pixel (y, x)."""
    from skimage import data

    img = data.brick()
    crop = img[y : y + 2 * size : 2, x : x + 2 * size : 2]
    return Image.fromarray(np.stack([crop] * 3, -1).astype(np.uint8))


def plant_scratch(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A dark 3 px line from (x0, y0) to (x1, y1)."""
    out = img.copy()
    ImageDraw.Draw(out).line(list(box), fill=(15, 15, 15), width=3)
    return out


def plant_spot(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A red filled ellipse in ``box``."""
    out = img.copy()
    ImageDraw.Draw(out).ellipse(list(box), fill=(200, 40, 30))
    return out


def planted_index(root: str | Path, name: str = "planted", n_good: int = 2) -> DatasetIndex:
    """A two-class dataset (``wall``, ``tile``) in MVTec layout, cut from scikit-image's ``brick``
    photo: per class one train normal, ``n_good`` test normals, a dark scratch and a red spot (the
    agent's examples and tests).

    Example:
        >>> import tempfile
        >>> index = planted_index(tempfile.mkdtemp())
        >>> index.frame.groupby(["split", "defect_type"]).size().to_dict()
        {('test', 'good'): 4, ('test', 'scratch'): 2, ('test', 'spot'): 2, ('train', 'good'): 2}
    """
    writer = IndexWriter(Path(root), name)
    for cls, (y0, x0) in {"wall": (0, 0), "tile": (40, 200)}.items():
        writer.add(cls, "train", "good", "000", texture_crop(y0, x0))
        for i in range(n_good):
            writer.add(cls, "test", "good", f"{i:03d}", texture_crop(y0 + 2 * i, x0 + 3 * i))
        writer.add(
            cls, "test", "scratch", "000", plant_scratch(texture_crop(y0, x0), (10, 15, 45, 30))
        )
        writer.add(cls, "test", "spot", "000", plant_spot(texture_crop(y0, x0), (90, 90, 104, 104)))
    return writer.index()


def write_part_pair(folder: Path) -> dict[str, Path]:
    """``reference.png`` (a grey texture, 150×100 RGB) and ``part.png`` (the same with a dark scratch
    in its upper left) in ``folder``, for ``hxpe predict``, the app and their examples.

    Example:
        >>> import tempfile
        >>> pair = write_part_pair(Path(tempfile.mkdtemp()))
        >>> [(name, path.name, Image.open(path).size) for name, path in pair.items()]
        [('part', 'part.png', (150, 100)), ('reference', 'reference.png', (150, 100))]
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = np.clip(140 + rng.normal(0, 10, (100, 150, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(base).save(folder / "reference.png")
    part = Image.fromarray(base)
    ImageDraw.Draw(part).line([10, 10, 50, 25], fill=(20, 20, 20), width=3)
    part.save(folder / "part.png")
    return {"part": folder / "part.png", "reference": folder / "reference.png"}


def _write_png(image: np.ndarray | Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path)
