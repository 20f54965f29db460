"""The tidy dataset index every later stage reads.

One row per image: ``image_id, dataset, cls, split, label, defect_type, image, mask, sha256``. Paths are
POSIX and relative to the dataset root, which is stored beside the table in ``dataset.json``; an
AnomalyCLIP-compatible ``meta.json`` is written next to it so that users can move between codebases.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from hxpe.data.fixtures import IndexWriter
    >>> tmp = Path(tempfile.mkdtemp())
    >>> writer = IndexWriter(tmp / "data", "toy")
    >>> for stem in ("000", "001"):
    ...     _ = writer.add("widget", "test", "good", stem, np.zeros((8, 8, 3), np.uint8))
    >>> idx = load_index(save_index(writer.index(), tmp / "index"))
    >>> idx.frame.groupby(["cls", "label"]).size().to_dict()
    {('widget', 0): 2}
    >>> idx.abs_path(idx.frame["image"][0]).relative_to(tmp).as_posix()
    'data/widget/test/good/000.png'
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

INDEX_COLUMNS = [
    "image_id",
    "dataset",
    "cls",
    "split",
    "label",
    "defect_type",
    "image",
    "mask",
    "sha256",
]
NORMAL_TYPE = "good"


@dataclass
class DatasetIndex:
    """An index table plus the dataset's name, kind and root directory."""

    name: str
    root: Path
    frame: pd.DataFrame
    kind: str = "mvtec"
    split_source: dict[str, str] = field(default_factory=dict)  # hxpe.data.spec.SplitInfo fields

    def abs_path(self, rel: str) -> Path:
        """Absolute path of an index path, refusing paths that escape the root."""
        if not rel:
            raise ValueError("empty path (a normal image has no mask)")
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError(f"index path {rel!r} escapes the dataset root {self.root}")
        return self.root / Path(*p.parts)

    def split(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split]

    @property
    def classes(self) -> list[str]:
        return sorted(self.frame["cls"].unique())

    def row(self, image_id: str) -> pd.Series:
        hit = self.frame[self.frame["image_id"] == image_id]
        if hit.empty:
            raise KeyError(f"image_id {image_id!r} is not in the index of {self.name}")
        return hit.iloc[0]


def make_image_id(dataset: str, cls: str, split: str, defect_type: str, image: str) -> str:
    """``<dataset>/<cls>/<split>/<defect_type>/<stem>``."""
    return f"{dataset}/{cls}/{split}/{defect_type}/{PurePosixPath(image).stem}"


def validate_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Check columns, labels and uniqueness; return the frame sorted in canonical order."""
    missing = [c for c in INDEX_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"index is missing columns {missing}; expected {INDEX_COLUMNS}")
    frame = frame[INDEX_COLUMNS].copy()
    frame["label"] = frame["label"].astype(int)
    frame["mask"] = frame["mask"].fillna("").astype(str)
    bad = frame[~frame["label"].isin([0, 1])]
    if not bad.empty:
        raise ValueError(f"labels must be 0/1; got {sorted(bad['label'].unique())}")
    dup = frame[frame["image_id"].duplicated(keep=False)]
    if not dup.empty:
        raise ValueError(f"duplicate image_id values: {sorted(dup['image_id'].unique())[:5]}")
    return frame.sort_values(["cls", "split", "defect_type", "image"], kind="stable").reset_index(
        drop=True
    )


def anomalyclip_meta(index: DatasetIndex) -> dict:
    """The AnomalyCLIP/APRIL-GAN ``meta.json`` structure (lower-case split keys)."""
    meta: dict[str, dict[str, list[dict]]] = {"train": {}, "test": {}}
    for row in index.frame.itertuples(index=False):
        meta.setdefault(row.split, {}).setdefault(row.cls, []).append(
            {
                "img_path": row.image,
                "mask_path": row.mask,
                "cls_name": row.cls,
                "specie_name": row.defect_type,
                "anomaly": int(row.label),
            }
        )
    return meta


def frame_sha256(frame: pd.DataFrame) -> str:
    """A content hash of the index table (order-independent of pandas' CSV formatting)."""
    text = frame[INDEX_COLUMNS].to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode()).hexdigest()


def save_index(index: DatasetIndex, out_dir: str | Path) -> Path:
    """Write ``index.csv``, ``meta.json`` and ``dataset.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = validate_frame(index.frame)
    frame.to_csv(out / "index.csv", index=False, lineterminator="\n")
    (out / "meta.json").write_text(json.dumps(anomalyclip_meta(index), indent=1))
    info = {
        "name": index.name,
        "kind": index.kind,
        "root": str(Path(index.root).resolve()),
        "n_images": int(len(frame)),
        "n_anomalous": int(frame["label"].sum()),
        "classes": sorted(frame["cls"].unique()),
        "index_sha256": frame_sha256(frame),
        "split": index.split_source,
    }
    (out / "dataset.json").write_text(json.dumps(info, indent=1))
    return out


def load_index(index_dir: str | Path) -> DatasetIndex:
    """Read an index directory written by :func:`save_index`."""
    d = Path(index_dir)
    if not (d / "index.csv").is_file() or not (d / "dataset.json").is_file():
        raise FileNotFoundError(
            f"No dataset index in {d}: expected index.csv and dataset.json. "
            f"Run stage 01 first (make data PROFILE=<profile>) or `hxpe prepare`."
        )
    info = json.loads((d / "dataset.json").read_text())
    # Every column but the label is text: class "01" (BTAD) must not become the integer 1.
    text = {c: str for c in INDEX_COLUMNS if c != "label"}
    frame = pd.read_csv(d / "index.csv", dtype=text, keep_default_na=False)
    return DatasetIndex(
        name=info["name"],
        root=Path(info["root"]),
        frame=validate_frame(frame),
        kind=info["kind"],
        split_source=dict(info.get("split") or {}),
    )


def select_references(
    index: DatasetIndex, rule: str = "first_normal_train"
) -> dict[str, str | None]:
    """The normal reference image per class (LEDGER.md §4 r1).

    ``first_normal_train``: the first ``train`` normal image of the class in sorted path order, falling
    back to the first normal ``test`` image when a class has no train split (and saying so in the
    record's ``reference_split``); ``none``: no reference.
    """
    if rule == "none":
        return {c: None for c in index.classes}
    if rule != "first_normal_train":
        raise ValueError(f"unknown reference rule {rule!r}; use 'first_normal_train' or 'none'")
    refs: dict[str, str | None] = {}
    normals = index.frame[index.frame["label"] == 0]
    for cls in index.classes:
        pool = normals[(normals["cls"] == cls) & (normals["split"] == "train")]
        if pool.empty:
            pool = normals[(normals["cls"] == cls) & (normals["split"] == "test")]
        refs[cls] = None if pool.empty else str(pool.sort_values("image").iloc[0]["image_id"])
    return refs
