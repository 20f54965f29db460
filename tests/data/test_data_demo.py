"""The embedded demo generator, prepare_all on the demo profile, and the notebook helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hxpe.data import DatasetError, prepare_all
from hxpe.data.config import DataConfig, DatasetSource, DemoDataConfig
from hxpe.data.demo import demo_classes, generate_demo_dataset, generate_demo_parts
from hxpe.data.demo_defects import DEFECTS
from hxpe.data.summary import sample_grid, summary_table

SMALL = DemoDataConfig(n_train_good=1, n_test_good=1, n_test_per_defect=1, image_size=64)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def demo_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_demo_parts(tmp_path_factory.mktemp("demo"), DemoDataConfig())


def test_default_demo_is_small_and_disjoint(demo_parts: dict[str, Path]) -> None:
    tables = {
        p: pd.read_csv(r / "defects.csv", keep_default_na=False) for p, r in demo_parts.items()
    }
    total = sum(len(t) for t in tables.values())
    assert 60 <= total <= 80
    assert set(tables["aux"]["cls"]).isdisjoint(tables["target"]["cls"])
    for table in tables.values():  # every part has at least five defect types
        assert len(set(table["defect_type"]) - {"good"}) >= 5


def test_demo_layout_masks_and_defects_csv(demo_parts: dict[str, Path]) -> None:
    root = demo_parts["target"]
    table = pd.read_csv(root / "defects.csv", keep_default_na=False)
    cfg = DemoDataConfig()
    for cls in cfg.target_classes:
        assert len(list((root / cls / "train" / "good").glob("*.png"))) == cfg.n_train_good
        assert len(list((root / cls / "test" / "good").glob("*.png"))) == cfg.n_test_good
    for row in table.itertuples():
        image = np.asarray(Image.open(root / row.image))
        assert image.shape == (128, 128, 3)
        if row.defect_type == "good":
            assert row.mask == "" and row.mask_pixels == 0
            continue
        mask = np.asarray(Image.open(root / row.mask))
        assert (
            row.mask == f"{row.cls}/ground_truth/{row.defect_type}/{Path(row.image).stem}_mask.png"
        )
        assert set(np.unique(mask)) == {0, 255} and (mask > 0).sum() == row.mask_pixels > 0
        assert "cy" in json.loads(row.params)


def test_normal_images_vary(demo_parts: dict[str, Path]) -> None:
    a, b = sorted((demo_parts["aux"] / "washer" / "train" / "good").glob("*.png"))[:2]
    diff = np.abs(np.asarray(Image.open(a), float) - np.asarray(Image.open(b), float))
    assert diff.mean() > 1.0  # jitter, lighting and noise: no two normal images are equal


def test_demo_is_bit_identical_on_rerun(tmp_path: Path) -> None:
    first = files(generate_demo_dataset(tmp_path / "a", "aux", SMALL))
    second = files(generate_demo_dataset(tmp_path / "b", "aux", SMALL))
    assert first == second and len(first) > 10
    other = files(
        generate_demo_dataset(tmp_path / "c", "aux", SMALL.model_copy(update={"seed": 1}))
    )
    assert other["brick/train/good/000.png"] != first["brick/train/good/000.png"]


def test_every_defect_type_on_every_class(tmp_path: Path) -> None:
    """Each defect function leaves a visible, masked change on every scene."""
    from hxpe.data.demo import _rng
    from hxpe.data.demo_defects import apply_defect
    from hxpe.data.demo_scenes import render_normal

    for cls, entry in demo_classes().items():
        for kind in DEFECTS:
            rng = _rng(0, cls, kind)
            scene = render_normal(entry, 64, rng)
            image, mask, _ = apply_defect(kind, scene, rng)
            assert mask.sum() >= 4, (cls, kind)
            assert np.abs(image - scene.image)[mask].mean() > 0.02, (cls, kind)


def test_demo_config_errors(tmp_path: Path) -> None:
    shared = DemoDataConfig(aux_classes=["brick"], target_classes=["brick"])
    with pytest.raises(ValueError, match=r"share \['brick'\]"):
        generate_demo_dataset(tmp_path / "x", "aux", shared)
    with pytest.raises(ValueError, match=r"unknown demo classes \['marble'\]"):
        generate_demo_dataset(tmp_path / "x", "aux", DemoDataConfig(aux_classes=["marble"]))
    assert not (tmp_path / "x").exists()


def demo_config(tmp_path: Path, monkeypatch, sources: list[DatasetSource]):
    from hxpe.config import Config

    monkeypatch.setenv("HXPE_RESULTS_ROOT", str(tmp_path / "results"))
    return Config(profile="t", data=DataConfig(datasets=sources, demo=SMALL))


def test_prepare_all_generates_and_indexes_both_parts(tmp_path: Path, monkeypatch) -> None:
    sources = [
        DatasetSource(name="demo_aux", kind="demo", options={"part": "aux"}),
        DatasetSource(name="demo_target", kind="demo", options={"part": "target"}),
    ]
    indexes = prepare_all(demo_config(tmp_path, monkeypatch, sources))
    results = tmp_path / "results" / "t"
    assert set(indexes) == {"demo_aux", "demo_target"}
    target = indexes["demo_target"]
    assert target.root == results / "data" / "demo_target"
    assert (results / "index" / "demo_target" / "index.csv").is_file()
    assert target.classes == sorted(SMALL.target_classes)
    assert len(target.frame) == 3 * (1 + 1 + 3)
    anomalous = target.frame[target.frame["label"] == 1]
    assert (anomalous["mask"] != "").all()

    table = summary_table(indexes)
    assert table.loc[("demo_target", "grass"), "test_anomalous"] == 3
    assert table.loc[("demo_aux", "brick"), "train_normal"] == 1
    assert list(table.columns) == ["train_normal", "test_normal", "test_anomalous", "total"]
    fig = sample_grid(target, n_per_class=1)
    assert len(fig.axes) == 3 * 2 and fig.axes[1].get_title().startswith("bracket: ")


def test_prepare_all_needs_the_demo_part(tmp_path: Path, monkeypatch) -> None:
    cfg = demo_config(tmp_path, monkeypatch, [DatasetSource(name="d", kind="demo")])
    with pytest.raises(DatasetError, match=r"needs options.part set to 'aux' or 'target'"):
        prepare_all(cfg)
