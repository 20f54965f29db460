"""The authors' prepared KolektorSDD and DAGM: detected by layout and indexed as they are.

KolektorSDD and DAGM have no official anomaly-detection split; AdaCLIP and AnomalyCLIP each built one
and published it. Only those files give the authors' exact test sets (AdaCLIP's scripts split in
``os.listdir`` order, which differs between file systems), so a root holding one is indexed from it,
with no flags:

* **AdaCLIP, KSDD** (``SDD_anomaly_detection/``): ``SDD/{train/good, test/good, test/defect,
  ground_truth/defect/<stem>_mask.png}`` and ``meta.json`` (data_preprocess/sdd-pre.py + sdd.py).
* **AdaCLIP, DAGM** (``DAGM_anomaly_detection/``): ``ClassN/{train/good, test/good, test/defect/NNNN.PNG,
  ground_truth/defect/NNNN_label.PNG}`` and ``meta.json`` (data_preprocess/dagm-pre.py + dagm.py).
* **AnomalyCLIP, KSDD** (its released ``SDD/``): ``electrical_commutators/test/{good, defect}`` (181
  normal / 74 anomalous test images) and ``meta.json`` (generate_dataset_json/SDD.py).
* **AnomalyCLIP, DAGM**: the raw ``DAGM_KaggleUpload`` tree plus the ``meta.json`` of
  generate_dataset_json/DAGM.py, whose splits are the original ``Train`` and ``Test`` parts: AnomalyCLIP
  evaluates on the whole original Test part, a different protocol from AdaCLIP's balanced test set.

``meta.json`` (``{split: {class: [{img_path, mask_path, cls_name, specie_name, anomaly}]}}``, paths
relative to the root) is the authors' list, image-mask pairing included, and is preferred; a prepared
tree without it is walked (DAGM masks ``NNNN_label.PNG`` pair by stem).

Example (a small tree in AdaCLIP's DAGM layout, from generated demo images):
    >>> from hxpe.data.fixtures import write_prepared_fixture
    >>> root = tmp_path / "DAGM_anomaly_detection"
    >>> write_prepared_fixture("adaclip_dagm", root, demo_root)
    ['Class1', 'Class2']
    >>> found = detect_prepared(root, "dagm")
    >>> found.provider, found.meta.name
    ('AdaCLIP', 'meta.json')
    >>> found.split.text
    "prepared by the authors: AdaCLIP's DAGM (DAGM_anomaly_detection, meta.json)"
    >>> entries = entries_from_meta(root, found.meta)
    >>> len(entries), sorted({(e.split, e.defect_type, e.mask is not None) for e in entries})
    (8, [('test', 'defect', True), ('test', 'good', False), ('train', 'good', False)])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hxpe.data.checks import listing, safe_join
from hxpe.data.errors import DatasetError
from hxpe.data.index import NORMAL_TYPE
from hxpe.data.layout import Entry, discover_classes
from hxpe.data.spec import SplitInfo

META_FILE = "meta.json"
DEFECT_TYPE = "defect"
ADACLIP_KSDD_CLASS = "SDD"
ANOMALYCLIP_KSDD_CLASSES = ("electrical commutators", "electrical_commutators")
ANOMALYCLIP_DAGM_SPLITS = ("Train", "Test")

RAW_REBUILT = {
    "ksdd": SplitInfo(
        "rebuilt",
        "rebuilt from raw with sorted listing (AdaCLIP's rule: three bands, 75/25 normals, seed 42)",
        "KSDD: AdaCLIP split in os.listdir order, so this test set is not AdaCLIP's file for file "
        "(22-30 % of the test normals coincide on a real-size tree); only the authors' prepared "
        "trees give their exact split. AnomalyCLIP's released SDD split differs again "
        "(181 normal / 74 anomalous test images).",
    ),
    "dagm": SplitInfo(
        "rebuilt",
        "rebuilt from raw with sorted listing (AdaCLIP's rule: per part, as many normals as "
        "defects to test)",
        "DAGM: AdaCLIP's balanced test set rebuilt from sorted files (part-prefixed names, where "
        "AdaCLIP's merge overwrites equal names); not AdaCLIP's file for file. AnomalyCLIP "
        "evaluates on the whole original Test part: a different protocol, so its DAGM row is not "
        "comparable with this split.",
    ),
}
OFFICIAL = SplitInfo("official", "the official release's split")


@dataclass(frozen=True)
class PreparedTree:
    """An authors' prepared tree: who prepared it, its ``meta.json`` (or None), how it was split."""

    provider: str  # "AdaCLIP" or "AnomalyCLIP"
    meta: Path | None
    split: SplitInfo


def _read_meta(path: Path) -> dict[str, dict[str, list[dict]]] | None:
    """The ``meta.json`` structure, or None when the file is not one."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(raw, dict) and raw and all(isinstance(v, dict) for v in raw.values())
    return raw if ok else None


def _meta_classes(meta: dict[str, dict[str, list[dict]]]) -> set[str]:
    return {cls for per_split in meta.values() for cls in per_split}


def _note(kind: str, provider: str) -> str:
    if kind == "dagm" and provider == "AnomalyCLIP":
        return (
            "DAGM: AnomalyCLIP's protocol, the whole original Test part of every class (all its "
            "normal and defective images). AdaCLIP's DAGM rows use a balanced test set: not "
            "comparable with this split."
        )
    if kind == "dagm":
        return (
            "DAGM: AdaCLIP's own balanced test set, comparable with AdaCLIP's table. AnomalyCLIP "
            "evaluates on the whole original Test part: a different protocol, so its DAGM row is "
            "not comparable with this split."
        )
    if provider == "AnomalyCLIP":
        return (
            "KSDD: AnomalyCLIP's released SDD split (181 normal / 74 anomalous test images), "
            "comparable with AnomalyCLIP's table; AdaCLIP's split differs."
        )
    return "KSDD: AdaCLIP's own split, comparable with AdaCLIP's table; AnomalyCLIP's differs."


def _provider(kind: str, root: Path, meta: dict | None) -> str | None:
    """Who prepared the tree at ``root`` (``kind`` ksdd or dagm), from its classes and split keys."""
    classes = _meta_classes(meta) if meta is not None else set(discover_classes(root))
    if kind == "ksdd":
        if ADACLIP_KSDD_CLASS in classes:
            return "AdaCLIP"
        if classes & set(ANOMALYCLIP_KSDD_CLASSES):
            return "AnomalyCLIP"
        return None
    if meta is not None and set(ANOMALYCLIP_DAGM_SPLITS) <= set(meta):
        return "AnomalyCLIP"
    return "AdaCLIP" if classes and all(c.startswith("Class") for c in classes) else None


def split_info(kind: str, root: Path, use_authors: bool = True) -> SplitInfo:
    """Which split an index of ``kind`` at ``root`` gets: official, the authors', or rebuilt."""
    if kind not in RAW_REBUILT:
        return OFFICIAL if kind != "demo" else SplitInfo("generated", "the generated demo split")
    found = detect_prepared(root, kind) if use_authors else None
    if found is not None:
        return found.split
    if discover_classes(root):
        return SplitInfo(
            "prepared",
            "a prepared MVTec-style tree of unknown origin, indexed as it is",
            RAW_REBUILT[kind].note,
        )
    return RAW_REBUILT[kind]


def detect_prepared(root: Path, kind: str) -> PreparedTree | None:
    """The authors' prepared tree (or meta file) of ``kind`` at ``root``, or None (raw data)."""
    meta_path = root / META_FILE
    meta = _read_meta(meta_path) if meta_path.is_file() else None
    provider = _provider(kind, root, meta)
    if provider is None:
        return None
    what = "meta.json" if meta is not None else "prepared tree, no meta.json"
    name = {"ksdd": "SDD", "dagm": "DAGM"}[kind]
    split = SplitInfo(
        "authors",
        f"prepared by the authors: {provider}'s {name} ({root.name}, {what})",
        _note(kind, provider),
    )
    return PreparedTree(provider, meta_path if meta is not None else None, split)


def entries_from_meta(root: Path, meta_path: Path, classes: tuple[str, ...] = ()) -> list[Entry]:
    """Index entries from an AdaCLIP/AnomalyCLIP ``meta.json``, its pairing kept as listed.

    Split keys are lower-cased (AnomalyCLIP's DAGM file says ``Train``/``Test``); a record's class is
    its ``cls_name``; its defect type is ``specie_name`` (``good`` for normal images, ``defect`` when
    an anomalous record names none). ``classes`` restricts the classes.
    """
    meta = _read_meta(meta_path)
    if meta is None:
        raise DatasetError(
            f"{meta_path} is not an AdaCLIP/AnomalyCLIP meta file ({{split: {{class: [records]}}}}); "
            f"restore it from the authors' archive or remove it to rebuild the split from raw data."
        )
    wanted = set(classes)
    entries, missing = [], []
    for split_key, per_class in meta.items():
        for cls_key, records in per_class.items():
            for n, rec in enumerate(records):
                cls = str(rec.get("cls_name") or cls_key)
                if wanted and cls not in wanted and cls_key not in wanted:
                    continue
                where = f"{meta_path}, {split_key}/{cls_key}[{n}]"
                label = int(rec["anomaly"])
                image = safe_join(root, rec["img_path"], where)
                mask = safe_join(root, rec["mask_path"], where) if rec.get("mask_path") else None
                for path in (image, mask):
                    if path is not None and not path.is_file():
                        missing.append(str(path.relative_to(root)))
                defect = str(rec.get("specie_name") or "") or (DEFECT_TYPE if label else "")
                defect = defect if label else NORMAL_TYPE
                entries.append(Entry(cls, split_key.lower(), label, defect, image, mask))
    if missing:
        raise DatasetError(
            f"{meta_path} lists {len(missing)} files that are not under {root}: "
            f"{listing(missing)}. Unpack the authors' archive completely."
        )
    if wanted and not entries:
        raise DatasetError(
            f"{meta_path} has no records of classes {sorted(wanted)}; it holds "
            f"{sorted(_meta_classes(meta))}."
        )
    return entries
