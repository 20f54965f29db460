"""The authors' prepared KSDD/DAGM trees and meta files (hxpe.data.authors) index without flags, in
their exact naming, and every index records which split it holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from hxpe.data import prepare_dataset
from hxpe.data.cli import register
from hxpe.data.config import DatasetSource, DemoDataConfig
from hxpe.data.demo import generate_demo_dataset
from hxpe.data.fixtures import write_prepared_fixture, write_raw_fixture
from hxpe.data.index import load_index
from hxpe.data.prepare import source_root


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    return generate_demo_dataset(out / "src", "aux", DemoDataConfig(image_size=32))


def index(tmp_path: Path, kind: str, root: Path, **options):
    source = DatasetSource(name=kind, kind=kind, root=str(root), options=options)
    return prepare_dataset(source, tmp_path / "index" / kind, allow_count_mismatch=True)


def counts(frame) -> dict[tuple[str, str, str], int]:
    return frame.groupby(["cls", "split", "defect_type"]).size().to_dict()


def test_adaclip_ksdd_tree_indexed_from_its_meta(tmp_path: Path, demo_root: Path) -> None:
    root = tmp_path / "SDD_anomaly_detection"
    write_prepared_fixture("adaclip_ksdd", root, demo_root)
    idx = index(tmp_path, "ksdd", root)
    assert idx.root == root.resolve()  # indexed in place, no re-split
    assert counts(idx.frame) == {
        ("SDD", "test", "defect"): 2,
        ("SDD", "test", "good"): 2,
        ("SDD", "train", "good"): 2,
    }
    row = idx.row("ksdd/SDD/test/defect/kos01_Part1_1")
    assert row["mask"] == "SDD/ground_truth/defect/kos01_Part1_1_mask.png"
    split = load_index(tmp_path / "index" / "ksdd").split_source
    assert split["source"] == "authors"
    assert split["text"] == (
        "prepared by the authors: AdaCLIP's SDD (SDD_anomaly_detection, meta.json)"
    )
    assert "comparable with AdaCLIP's table" in split["note"]


def test_meta_pairing_is_taken_as_listed(tmp_path: Path, demo_root: Path) -> None:
    root = tmp_path / "SDD_anomaly_detection"
    write_prepared_fixture("adaclip_ksdd", root, demo_root)
    meta = json.loads((root / "meta.json").read_text())
    meta["test"]["SDD"] = [r for r in meta["test"]["SDD"] if r["specie_name"] == "good"]
    (root / "meta.json").write_text(json.dumps(meta))
    idx = index(tmp_path, "ksdd", root)  # the authors' list decides, not the folder contents
    assert counts(idx.frame)[("SDD", "test", "good")] == 2
    assert idx.frame["label"].sum() == 0


def test_cli_prepare_dagm_indexes_adaclip_tree_without_flags(
    tmp_path: Path, demo_root: Path, capsys
) -> None:
    root = tmp_path / "DAGM_anomaly_detection"
    write_prepared_fixture("adaclip_dagm", root, demo_root)
    top = argparse.ArgumentParser(prog="hxpe")
    register(top.add_subparsers(dest="command"))
    out = tmp_path / "idx"
    args = top.parse_args(["prepare", "dagm", "--root", str(root), "--out", str(out)])
    assert args.func(args) == 0, capsys.readouterr().err
    idx = load_index(out)
    assert counts(idx.frame) == {
        (cls, split, defect): n
        for cls in ("Class1", "Class2")
        for (split, defect, n) in (("test", "defect", 2), ("test", "good", 1), ("train", "good", 2))
    }
    row = idx.row("dagm/Class2/test/defect/0008")
    assert row["mask"] == "Class2/ground_truth/defect/0008_label.PNG"
    assert "AdaCLIP's DAGM (DAGM_anomaly_detection, meta.json)" in idx.split_source["text"]
    assert "whole original Test part" in idx.split_source["note"]


def test_adaclip_dagm_tree_without_meta_pairs_label_masks(tmp_path: Path, demo_root: Path) -> None:
    root = tmp_path / "DAGM_anomaly_detection"
    write_prepared_fixture("adaclip_dagm", root, demo_root, with_meta=False)
    idx = index(tmp_path, "dagm", root)
    assert idx.row("dagm/Class1/test/defect/0007")["mask"] == (
        "Class1/ground_truth/defect/0007_label.PNG"
    )
    assert idx.split_source["text"].endswith(
        "(DAGM_anomaly_detection, prepared tree, no meta.json)"
    )


def test_anomalyclip_ksdd_release(tmp_path: Path, demo_root: Path) -> None:
    root = tmp_path / "SDD"
    write_prepared_fixture("anomalyclip_ksdd", root, demo_root)
    idx = index(tmp_path, "ksdd", root)
    assert counts(idx.frame) == {
        ("electrical_commutators", "test", "defect"): 2,
        ("electrical_commutators", "test", "good"): 2,
    }
    assert idx.split_source["text"].startswith("prepared by the authors: AnomalyCLIP's SDD")
    assert "181 normal / 74 anomalous" in idx.split_source["note"]


def test_anomalyclip_dagm_meta_is_the_whole_test_part(tmp_path: Path, demo_root: Path) -> None:
    root = tmp_path / "DAGM_KaggleUpload"
    write_prepared_fixture("anomalyclip_dagm", root, demo_root)
    idx = index(tmp_path, "dagm", root, classes=["Class1"])
    assert idx.root == root.resolve()
    # the raw fixture: per part 3 normal images and 1 defective (0004): all of them, unbalanced
    assert counts(idx.frame) == {
        ("Class1", "test", "defect"): 1,
        ("Class1", "test", "good"): 3,
        ("Class1", "train", "defect"): 1,
        ("Class1", "train", "good"): 3,
    }
    assert idx.row("dagm/Class1/test/defect/0004")["mask"] == "Class1/Test/Label/0004_label.PNG"
    assert idx.split_source["source"] == "authors"
    assert "AnomalyCLIP's protocol, the whole original Test part" in idx.split_source["note"]
    # authors_split: false rebuilds AdaCLIP's balanced split from the raw files instead
    rebuilt = index(tmp_path / "b", "dagm", root, classes=["Class1"], authors_split=False)
    assert rebuilt.split_source["source"] == "rebuilt"
    assert counts(rebuilt.frame)[("Class1", "test", "good")] == 2  # one per part, balanced


def test_raw_data_says_rebuilt_with_sorted_listing(tmp_path: Path, demo_root: Path) -> None:
    root = tmp_path / "KolektorSDD"
    write_raw_fixture("ksdd", root, demo_root)
    split = index(tmp_path, "ksdd", root).split_source
    assert split["source"] == "rebuilt" and "sorted listing" in split["text"]
    assert "only the authors' prepared trees give their exact split" in split["note"]


def test_prefer_roots_take_the_authors_tree_when_present(tmp_path: Path) -> None:
    raw, prepared = tmp_path / "KolektorSDD", tmp_path / "SDD_anomaly_detection"
    raw.mkdir()
    source = DatasetSource(name="ksdd", kind="ksdd", root=str(raw), prefer_roots=[str(prepared)])
    assert source_root(source) == raw
    prepared.mkdir()
    assert source_root(source) == prepared


def test_doctor_reports_the_preferred_root(tmp_path: Path) -> None:
    from hxpe.config import Config
    from hxpe.doctor import check_datasets

    raw, prepared = tmp_path / "DAGM_KaggleUpload", tmp_path / "DAGM_anomaly_detection"
    source = {"name": "dagm", "kind": "dagm", "root": str(raw), "prefer_roots": [str(prepared)]}
    cfg = Config(profile="t", data={"datasets": [source]})
    (check,) = check_datasets(cfg)
    assert not check.ok and str(raw) in check.detail  # neither exists: the fallback is named
    prepared.mkdir()
    (check,) = check_datasets(cfg)
    assert check.ok and str(prepared) in check.detail
