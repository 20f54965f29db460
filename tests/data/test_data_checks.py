"""Every error path of data preparation, and its message."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hxpe.data import DatasetError, prepare_dataset
from hxpe.data.config import DatasetSource
from hxpe.data.index import load_index

from support.raw_trees import write_image, write_mask, write_mvtec_tree, write_visa

ONE_CLASS = {"bottle": {"train": 1, "good": 1, "crack": 1}}


def run(tmp_path: Path, kind: str, root: Path, allow: bool = True, **options):
    source = DatasetSource(name=kind, kind=kind, root=str(root), options=options)
    return prepare_dataset(source, tmp_path / "index" / kind, allow_count_mismatch=allow)


def test_missing_root_says_where_to_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"does not exist.*mvtec\.com"):
        run(tmp_path, "mvtec", tmp_path / "nowhere")


def test_missing_class_folder_is_named(tmp_path: Path) -> None:
    root = write_mvtec_tree(tmp_path / "m", ONE_CLASS)
    with pytest.raises(DatasetError, match=r"expected folder cable \(class 'cable'\) is missing"):
        run(tmp_path, "mvtec", root, classes=["bottle", "cable"])


def test_missing_ground_truth_folder_is_named(tmp_path: Path) -> None:
    root = write_mvtec_tree(tmp_path / "m", ONE_CLASS)
    (root / "bottle/ground_truth/crack/000_mask.png").unlink()
    (root / "bottle/ground_truth/crack").rmdir()
    with pytest.raises(DatasetError, match=r"bottle/ground_truth/crack \(masks of defect type"):
        run(tmp_path, "mvtec", root, classes=["bottle"])


def test_defects_in_train_split_are_refused(tmp_path: Path) -> None:
    root = write_mvtec_tree(tmp_path / "m", ONE_CLASS)
    write_image(root / "bottle/train/crack/000.png")
    with pytest.raises(DatasetError, match=r"holds crack besides the normal folder 'good'"):
        run(tmp_path, "mvtec", root, classes=["bottle"])


def test_count_mismatch_names_class_and_counts(tmp_path: Path) -> None:
    root = write_mvtec_tree(tmp_path / "m", ONE_CLASS)
    with pytest.raises(DatasetError) as err:
        run(tmp_path, "mvtec", root, allow=False, classes=["bottle"])
    text = str(err.value)
    assert "class 'bottle': train_normal 1 (official 209), test_normal 1 (official 20)" in text
    assert "test_anomalous 1 (official 63)" in text and "--allow-count-mismatch" in text
    assert not (tmp_path / "index" / "mvtec").exists()


def test_count_match_passes_without_flag(tmp_path: Path, monkeypatch) -> None:
    from hxpe.data import registry
    from hxpe.data.spec import ExpectedCounts

    spec = registry.get_spec("mpdd")
    counts = ExpectedCounts("test", True, {"tubes": (1, 1, 1)})
    patched = {**registry.load_specs(), "mpdd": type(spec)(**{**spec.__dict__, "counts": counts})}
    monkeypatch.setattr(registry, "load_specs", lambda: patched)
    root = write_mvtec_tree(tmp_path / "m", {"tubes": {"train": 1, "good": 1, "crack": 1}})
    assert len(run(tmp_path, "mpdd", root, allow=False, classes=["tubes"]).frame) == 3


def test_unverified_counts_only_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_mvtec_tree(tmp_path / "b", {"01": {"train": 1, "good": 1, "ko": 1}}, normal="ok")
    with caplog.at_level(logging.WARNING):
        run(tmp_path, "btad", root, allow=False, classes=["01"])
    assert "counts not verified" in caplog.text and "class '01'" in caplog.text


def test_unpaired_images_and_masks_are_listed(tmp_path: Path) -> None:
    root = write_mvtec_tree(tmp_path / "m", {"bottle": {"train": 1, "good": 1, "crack": 2}})
    (root / "bottle/ground_truth/crack/001_mask.png").rename(
        root / "bottle/ground_truth/crack/007_mask.png"
    )
    with pytest.raises(DatasetError) as err:
        run(tmp_path, "mvtec", root, classes=["bottle"])
    assert "images without a mask: 001.png; masks without an image: 007_mask.png" in str(err.value)


def test_truncated_image_is_named(tmp_path: Path) -> None:
    root = write_mvtec_tree(tmp_path / "m", ONE_CLASS)
    img = root / "bottle/train/good/000.png"
    img.write_bytes(img.read_bytes()[:60])
    with pytest.raises(DatasetError, match=rf"Cannot read image {img}.*truncated"):
        run(tmp_path, "mvtec", root, classes=["bottle"])


def test_mask_size_mismatch(tmp_path: Path) -> None:
    root = write_mvtec_tree(tmp_path / "m", ONE_CLASS)
    write_mask(root / "bottle/ground_truth/crack/000_mask.png", size=(8, 6))
    with pytest.raises(DatasetError, match=r"000_mask.png is 8x6 but its image .* is 8x8"):
        run(tmp_path, "mvtec", root, classes=["bottle"])


def test_non_binary_mask_is_reported_with_rule(tmp_path, caplog) -> None:
    root = write_mvtec_tree(tmp_path / "m", ONE_CLASS)
    arr = np.zeros((8, 8), np.uint8)
    arr[0, 0], arr[1, 1] = 100, 255
    Image.fromarray(arr).save(root / "bottle/ground_truth/crack/000_mask.png")
    with caplog.at_level(logging.WARNING):
        run(tmp_path, "mvtec", root, classes=["bottle"])
    assert "1 masks are not binary (e.g. 000_mask.png)" in caplog.text
    assert "a mask pixel is a defect when it is non-zero" in caplog.text


@pytest.mark.parametrize("bad", ["../outside.JPG", "/etc/passwd"])
def test_paths_escaping_the_root_are_refused(tmp_path: Path, bad: str) -> None:
    root = write_visa(tmp_path / "visa")
    csv = root / "split_csv/1cls.csv"
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table.loc[1, "image"] = bad
    table.to_csv(csv, index=False)
    with pytest.raises(DatasetError, match=rf"1cls.csv, line 3: path '{bad}' escapes the dataset"):
        run(tmp_path, "visa", root, classes=["candle"])


def test_visa_without_split_csv(tmp_path: Path) -> None:
    (tmp_path / "visa").mkdir()
    with pytest.raises(DatasetError, match=r"split_csv/1cls.csv is missing"):
        run(tmp_path, "visa", tmp_path / "visa")


def test_folder_without_recognisable_normal_dir(tmp_path: Path) -> None:
    write_image(tmp_path / "f" / "cls" / "pictures" / "a.png")
    with pytest.raises(DatasetError, match=r"no folder named like a normal folder.*--normal-dir"):
        run(tmp_path, "folder", tmp_path / "f")


def test_ksdd_image_without_label(tmp_path: Path) -> None:
    write_image(tmp_path / "k" / "kos01" / "Part0.jpg")
    with pytest.raises(DatasetError, match=r"without their <stem>_label.bmp.*kos01/Part0.jpg"):
        run(tmp_path, "ksdd", tmp_path / "k")


def test_unknown_option_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown options \['normaldir'\].*normal_dir"):
        run(tmp_path, "folder", tmp_path, normaldir="ok")


def test_failed_prepare_keeps_the_previous_index(tmp_path: Path) -> None:
    root = write_mvtec_tree(tmp_path / "m", ONE_CLASS)
    first = run(tmp_path, "mvtec", root, classes=["bottle"])
    write_image(root / "bottle/train/good/001.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="Cannot read image"):
        run(tmp_path, "mvtec", root, classes=["bottle"])
    kept = load_index(tmp_path / "index" / "mvtec")
    assert kept.frame.equals(first.frame)
    assert [p.name for p in (tmp_path / "index").iterdir()] == ["mvtec"]  # no staging left
