"""Every index builder on a tiny tree in its raw layout, checked row by row."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hxpe.data import prepare_dataset
from hxpe.data.config import DatasetSource
from hxpe.data.index import INDEX_COLUMNS, load_index

from support.raw_trees import write_image, write_mask, write_mvtec_tree, write_visa


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(tmp_path: Path, kind: str, root: Path, **options) -> pd.DataFrame:
    source = DatasetSource(name=kind, kind=kind, root=str(root), options=options)
    index = prepare_dataset(source, tmp_path / "index" / kind, allow_count_mismatch=True)
    assert list(index.frame.columns) == INDEX_COLUMNS
    for row in index.frame.itertuples():
        assert row.sha256 == sha(index.abs_path(row.image))
    return index.frame.set_index("image_id")


def test_mvtec_rows_meta_and_dataset_json(tmp_path: Path) -> None:
    root = write_mvtec_tree(
        tmp_path / "mvtec", {"bottle": {"train": 2, "good": 1, "broken_large": 2}}
    )
    frame = prepare(tmp_path, "mvtec", root, classes=["bottle"])
    assert len(frame) == 5
    row = frame.loc["mvtec/bottle/test/broken_large/001"]
    assert (row.cls, row.split, row.label, row.defect_type) == ("bottle", "test", 1, "broken_large")
    assert row.image == "bottle/test/broken_large/001.png"
    assert row["mask"] == "bottle/ground_truth/broken_large/001_mask.png"
    good = frame.loc["mvtec/bottle/train/good/000"]
    assert (good.label, good.defect_type, good["mask"]) == (0, "good", "")
    out = tmp_path / "index" / "mvtec"
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta) == {"train", "test"}
    assert len(meta["train"]["bottle"]) == 2 and len(meta["test"]["bottle"]) == 3
    first_bad = [m for m in meta["test"]["bottle"] if m["anomaly"] == 1][0]
    assert first_bad["mask_path"] == "bottle/ground_truth/broken_large/000_mask.png"
    info = json.loads((out / "dataset.json").read_text())
    assert info["root"] == str(root.resolve()) and info["n_images"] == 5
    assert load_index(out).frame.equals(frame.reset_index()[INDEX_COLUMNS])


@pytest.mark.parametrize(
    ("kind", "cls"), [("mpdd", "tubes"), ("dtd", "Woven_001"), ("demo", "anything")]
)
def test_mvtec_like_kinds(tmp_path: Path, kind: str, cls: str) -> None:
    root = write_mvtec_tree(tmp_path / kind, {cls: {"train": 1, "good": 1, "defect": 1}})
    options = {"classes": [cls]} if kind != "demo" else {}
    frame = prepare(tmp_path, kind, root, **options)
    assert sorted(frame.index) == [
        f"{kind}/{cls}/test/defect/000",
        f"{kind}/{cls}/test/good/000",
        f"{kind}/{cls}/train/good/000",
    ]


def test_btad_ok_ko_and_mixed_extensions(tmp_path: Path) -> None:
    root = tmp_path / "BTech_Dataset_transformed"
    write_mvtec_tree(
        root,
        {"01": {"train": 2, "good": 1, "ko": 2}},
        normal="ok",
        image_ext=".bmp",
        mask_suffix="",
    )
    write_image(root / "01" / "test" / "ko" / "002.png", seed=9)  # mixed extensions in one folder
    write_mask(root / "01" / "ground_truth" / "ko" / "002.png")
    frame = prepare(tmp_path, "btad", root, classes=["01"])
    assert frame["label"].sum() == 3
    assert frame.loc["btad/01/test/ko/000", "image"] == "01/test/ko/000.bmp"
    assert frame.loc["btad/01/test/ko/000", "mask"] == "01/ground_truth/ko/000.png"
    assert frame.loc["btad/01/test/ko/002", "image"] == "01/test/ko/002.png"
    assert frame.loc["btad/01/test/good/000", "image"] == "01/test/ok/000.bmp"


def test_visa_from_split_csv(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_visa(tmp_path / "visa")
    frame = prepare(tmp_path, "visa", root, classes=["candle"])
    assert len(frame) == 3 and set(frame["cls"]) == {"candle"}
    bad = frame.loc["visa/candle/test/anomaly/000"]
    assert (bad.label, bad.image, bad["mask"]) == (
        1,
        "candle/Data/Images/Anomaly/000.JPG",
        "candle/Data/Masks/Anomaly/000.png",
    )
    assert frame.loc["visa/candle/train/good/0000", "split"] == "train"
    assert "not binary" not in caplog.text  # {0, 1} is binary


def test_folder_detects_normal_dir_and_optional_masks(tmp_path: Path) -> None:
    root = tmp_path / "my_parts"
    write_image(root / "OK" / "a.png", 1)
    write_image(root / "OK" / "b.jpg", 2)
    write_image(root / "dent" / "c.png", 3)
    write_mask(root / "ground_truth" / "dent" / "c_mask.png")
    write_image(root / "smudge" / "d.png", 4)  # no masks: image-level only
    frame = prepare(tmp_path, "folder", root)
    assert sorted(frame.index) == [
        "folder/my_parts/test/dent/c",
        "folder/my_parts/test/good/a",
        "folder/my_parts/test/good/b",
        "folder/my_parts/test/smudge/d",
    ]
    assert frame.loc["folder/my_parts/test/dent/c", "mask"] == "ground_truth/dent/c_mask.png"
    assert frame.loc["folder/my_parts/test/smudge/d", "mask"] == ""
    assert frame.loc["folder/my_parts/test/good/a", "image"] == "OK/a.png"


def test_folder_several_classes_with_given_normal_dir(tmp_path: Path) -> None:
    root = tmp_path / "plant"
    for cls in ("gear", "shaft"):
        write_image(root / cls / "reference" / "n.png", 1)
        write_image(root / cls / "crack" / "x.png", 2)
    frame = prepare(tmp_path, "folder", root, normal_dir="reference", split="test")
    assert set(frame["cls"]) == {"gear", "shaft"}
    assert frame.loc["folder/shaft/test/good/n", "image"] == "shaft/reference/n.png"
    assert frame["label"].sum() == 2


def write_ksdd(root: Path, n_images: int = 4) -> Path:
    """``kosNN/PartK.jpg`` (6x12 grey) + ``PartK_label.bmp``; only kos01/Part0 has a defect, in
    its middle band."""
    for i in range(n_images):
        folder = root / f"kos{i // 2 + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        grey = np.random.default_rng(i).integers(0, 255, (12, 6), dtype=np.uint8)
        Image.fromarray(grey).save(folder / f"Part{i % 2}.jpg")
        label = np.zeros((12, 6), np.uint8)
        if i == 0:
            label[5:7, 2:4] = 255
        Image.fromarray(label).save(folder / f"Part{i % 2}_label.bmp")
    return root


def test_ksdd_raw_bands_split_and_masks(tmp_path: Path) -> None:
    root = write_ksdd(tmp_path / "KolektorSDD")
    frame = prepare(tmp_path, "ksdd", root)
    cls = "electrical_commutators"
    assert len(frame) == 12  # 4 images x 3 bands
    defect = frame.loc[f"ksdd/{cls}/test/defect/kos01_Part0_1"]
    assert defect["mask"] == f"{cls}/ground_truth/defect/kos01_Part0_1_mask.png"
    counts = frame[frame["label"] == 0].groupby("split").size().to_dict()
    assert counts == {"test": 3, "train": 8}  # 11 normal bands split 75/25
    index = load_index(tmp_path / "index" / "ksdd")
    assert index.root == (tmp_path / "index" / "ksdd" / "prepared").resolve()
    mask = np.asarray(Image.open(index.abs_path(defect["mask"])))
    assert mask.shape == (4, 6) and set(np.unique(mask)) == {0, 255} and mask[1:3, 2:4].all()
    band = np.asarray(Image.open(index.abs_path(defect["image"])))
    assert band.shape == (4, 6)


def test_ksdd_accepts_prepared_tree(tmp_path: Path) -> None:
    root = write_mvtec_tree(
        tmp_path / "SDD_anomaly_detection", {"SDD": {"train": 1, "good": 1, "defect": 1}}
    )
    frame = prepare(tmp_path, "ksdd", root)
    assert set(frame["cls"]) == {"SDD"} and len(frame) == 3


def write_dagm(root: Path) -> Path:
    """Class1 with Train (4 images, 0002 defective) and Test (3 images, 0001 defective)."""
    for part, n, bad in (("Train", 4, "0002"), ("Test", 3, "0001")):
        for i in range(1, n + 1):
            write_image(root / "Class1" / part / f"{i:04d}.PNG", seed=i)
        write_mask(root / "Class1" / part / "Label" / f"{bad}_label.PNG")
        (root / "Class1" / part / "Label" / "Labels.txt").write_text("1\n")
    return root


def test_dagm_balanced_split_with_part_prefixes(tmp_path: Path) -> None:
    root = write_dagm(tmp_path / "DAGM2007")
    frame = prepare(tmp_path, "dagm", root, classes=["Class1"])
    by_split = {
        (s, d): sorted(g.index.str.rsplit("/", n=1).str[1])
        for (s, d), g in frame.groupby(["split", "defect_type"])
    }
    assert by_split == {
        ("test", "defect"): ["test_0001", "train_0002"],
        ("test", "good"): ["test_0002", "train_0001"],
        ("train", "good"): ["test_0003", "train_0003", "train_0004"],
    }
    row = frame.loc["dagm/Class1/test/defect/train_0002"]
    assert row["mask"] == "Class1/ground_truth/defect/train_0002_mask.PNG"
    index = load_index(tmp_path / "index" / "dagm")
    linked = index.abs_path(row.image)
    assert linked.is_symlink() and linked.resolve() == (root / "Class1/Train/0002.PNG").resolve()


def test_dagm_copy_option(tmp_path: Path) -> None:
    root = write_dagm(tmp_path / "DAGM2007")
    prepare(tmp_path, "dagm", root, classes=["Class1"], link="copy")
    index = load_index(tmp_path / "index" / "dagm")
    assert not index.abs_path(index.frame["image"].iloc[0]).is_symlink()
