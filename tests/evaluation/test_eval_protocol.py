"""The protocol runner with a stand-in model: maps, cache, metric values, shards and merge."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from hxpe.config import Config
from hxpe.data.fixtures import IndexWriter
from hxpe.data.index import DatasetIndex, load_index, save_index
from hxpe.evaluation.maps import MapStore
from hxpe.evaluation.metrics import pixel_metrics
from hxpe.evaluation.protocol import infer_dataset, run_protocol
from hxpe.evaluation.results import merge_metrics
from hxpe.results_layout import ResultsLayout

SIZE = 32


class StandIn(nn.Module):
    """Map = channel mean of the image (defects are drawn bright); score = map maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))
        self.calls: list[dict] = []

    def forward(self, images, phrases, references, has_reference):
        self.calls.append({"phrases": list(phrases), "has_reference": has_reference})
        amap = images.mean(1) * self.gain
        return SimpleNamespace(
            image_score=amap.amax(dim=(1, 2)),
            anomaly_map=amap,
            vfm_prompt=amap[:, ::8, ::8],
        )


FLAT = 0.025  # flat maps: values within ±0.0125 of 0.5, as a weakly separating model gives


class FlatStandIn(StandIn):
    """The stand-in's map squeezed to 0.5 ± 0.0125 (float16 has ~2.4e-4 resolution there)."""

    def forward(self, images, phrases, references, has_reference):
        out = super().forward(images, phrases, references, has_reference)
        out.anomaly_map = 0.5 + FLAT * (out.anomaly_map - 0.5)
        out.image_score = out.anomaly_map.amax(dim=(1, 2))
        return out


def write_dataset(root: Path) -> DatasetIndex:
    """Classes ``a`` and ``b`` with normal and defective test images, ``c`` with normal ones only."""
    rng = np.random.default_rng(0)
    writer = IndexWriter(root, "tgt")
    for cls in ("a", "b", "c"):
        specs = [("train", "good", i) for i in range(2)] + [("test", "good", i) for i in range(3)]
        if cls != "c":
            specs += [("test", "scratch", i) for i in range(3)]
        for split, defect, i in specs:
            img = rng.integers(0, 120, (SIZE, SIZE, 3), dtype=np.uint8)
            mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
            if defect != "good":
                y, x = rng.integers(2, SIZE - 10, 2)
                mask[y : y + 6 + i, x : x + 5] = 255
                img[mask > 0] += 100
            writer.add(cls, split, defect, f"{i:03d}", img, mask if defect != "good" else None)
    return writer.index()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    rd = tmp_path_factory.mktemp("results")
    index = write_dataset(rd / "data" / "tgt")
    save_index(index, rd / "index" / "tgt")
    return rd


def make_cfg() -> Config:
    return Config(
        profile="test",
        evaluation={
            "directions": [{"name": "aux_to_tgt", "train": "aux", "test": ["tgt"]}],
            "image_size": SIZE,
            "batch_size": 3,
            "num_workers": 0,
            "metrics_device": "cpu",
        },
        variants={"plain": {"explain": {"enabled": False}}, "hxpe": {}},
    )


def class_arrays(
    index: DatasetIndex, cls: str, flat: bool = False, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, float32 maps and boolean masks of one class's test images, read with PIL
    (``flat``: the :class:`FlatStandIn` maps; ``dtype``: round the maps through it first)."""
    rows = index.split("test")
    rows = rows[rows["cls"] == cls]
    maps, masks = [], []
    for r in rows.itertuples():
        img = np.asarray(Image.open(index.abs_path(r.image)), dtype=np.float32) / 255
        amap = img.mean(-1)
        if flat:
            amap = np.float32(0.5) + np.float32(FLAT) * (amap - np.float32(0.5))
        maps.append(amap.astype(dtype).astype(np.float32))
        m = np.asarray(Image.open(index.abs_path(r.mask))) if r.mask else np.zeros((SIZE, SIZE))
        masks.append(m > 0)
    return rows["label"].to_numpy(), np.stack(maps), np.stack(masks)


def expected_class_values(
    index: DatasetIndex, cls: str, flat: bool = False, dtype: type = np.float32
) -> dict[str, float]:
    """Metrics computed independently: scikit-learn on :func:`class_arrays`."""
    labels, maps_a, masks_a = class_arrays(index, cls, flat, dtype)
    scores = maps_a.max(axis=(1, 2))
    return {
        "image_auroc": roc_auc_score(labels, scores),
        "image_ap": average_precision_score(labels, scores),
        "pixel_auroc": roc_auc_score(masks_a.ravel(), maps_a.ravel()),
        "pixel_ap": average_precision_score(masks_a.ravel(), maps_a.ravel()),
    }


def test_infer_dataset_writes_maps_scores_and_vfm(results: Path, tmp_path: Path) -> None:
    index = load_index(results / "index" / "tgt")
    model = StandIn()
    phrases = {index.split("test")["image_id"].iloc[0]: "a scratch"}
    refs = {"a": index.split("train")["image_id"].iloc[0], "b": None, "c": None}
    out = infer_dataset(model, index, phrases, refs, make_cfg().evaluation, tmp_path / "s", key="k")
    store = MapStore(out)
    scores = store.scores()
    assert len(scores) == len(index.split("test")) and store.is_complete("k")
    first = scores["image_id"].iloc[0]
    assert store.read_map(first).shape == (SIZE, SIZE) and store.read_map(first).dtype == np.float32
    assert store.read_vfm_prompt(first).shape == (4, 4)
    assert model.calls[0]["phrases"][0] == "a scratch" and model.calls[0]["phrases"][1] is None
    assert model.calls[0]["has_reference"].tolist() == [True, True, True]


def test_run_protocol_values_cache_and_merge(results: Path) -> None:
    cfg = make_cfg()
    loads: list[tuple[str, str]] = []

    def load_model(cfg, direction, variant, rd):
        loads.append((direction, variant))
        return StandIn()

    phrases_file = results / "agent" / "extractions.jsonl"
    phrases_file.parent.mkdir(parents=True, exist_ok=True)
    phrases_file.write_text("{}\n")
    phrase_table = {"tgt/a/test/scratch/000": "a scratch"}

    per_class = run_protocol(
        cfg, results_dir=results, load_model=load_model, load_phrases=lambda p: dict(phrase_table)
    )
    assert sorted(loads) == [("aux_to_tgt", "hxpe"), ("aux_to_tgt", "plain")]
    index = load_index(results / "index" / "tgt")
    got = per_class[per_class["variant"] == "plain"].set_index(["cls", "metric"])["value"]
    for cls in ("a", "b"):
        for metric, value in expected_class_values(index, cls).items():
            assert got[(cls, metric)] == pytest.approx(value, abs=1e-9), (cls, metric)
    # Class c has no anomalous image: its metrics are skipped with a reason, never NaN.
    assert "c" not in set(per_class["cls"])
    skipped = pd.read_csv(results / "metrics" / "skipped.csv")
    assert set(skipped.loc[skipped["cls"] == "c", "metric"]) >= {"image_auroc", "pixel_aupro_exact"}
    per_dataset = pd.read_csv(results / "metrics" / "per_dataset.csv")
    row = per_dataset[
        (per_dataset["variant"] == "plain") & (per_dataset["metric"] == "pixel_auroc")
    ]
    assert row["value"].item() == pytest.approx(
        got[[("a", "pixel_auroc"), ("b", "pixel_auroc")]].mean()
    )
    assert row["n_classes"].item() == 2
    assert not per_dataset["value"].isna().any()

    # Unchanged inputs: maps are reused, no model is loaded; a killed run's staging folder goes.
    plain = MapStore(ResultsLayout.at(results).maps_dir("aux_to_tgt", "plain", "tgt"))
    (plain.staging_root / "maps").mkdir(parents=True)
    loads.clear()
    again = run_protocol(
        cfg, results_dir=results, load_model=load_model, load_phrases=lambda p: dict(phrase_table)
    )
    assert loads == []
    pd.testing.assert_frame_equal(again, per_class)
    assert not plain.staging_root.exists()

    # A changed phrase invalidates only the variant that uses phrases; a shard does not merge.
    phrase_table["tgt/b/test/scratch/001"] = "a dent"
    run_protocol(
        cfg,
        results_dir=results,
        datasets=["tgt"],
        load_model=load_model,
        load_phrases=lambda p: dict(phrase_table),
    )
    assert loads == [("aux_to_tgt", "hxpe")]
    merged, _ = merge_metrics(results)
    assert len(merged) == len(per_class)
    assert (
        ResultsLayout.at(results).maps_dir("aux_to_tgt", "hxpe", "tgt") / "manifest.json"
    ).is_file()


def test_selection_errors_name_the_choices(results: Path) -> None:
    with pytest.raises(ValueError, match="unknown variants"):
        run_protocol(make_cfg(), results_dir=results, variants=["nope"], load_model=None)
    with pytest.raises(ValueError, match="unknown datasets"):
        run_protocol(make_cfg(), results_dir=results, datasets=["mvtec"])


def test_missing_phrases_is_an_error_only_for_explain_variants(tmp_path: Path) -> None:
    rd = tmp_path / "r"
    save_index(write_dataset(rd / "data" / "tgt"), rd / "index" / "tgt")
    cfg = make_cfg()
    run_protocol(cfg, results_dir=rd, variants=["plain"], load_model=lambda *a: StandIn())
    with pytest.raises(FileNotFoundError, match="uses explainable prompts"):
        run_protocol(cfg, results_dir=rd, variants=["hxpe"], load_model=lambda *a: StandIn())


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_flat_maps_metrics_are_full_precision_whatever_the_store(
    dtype: str, tmp_path: Path
) -> None:
    """Flat maps (±0.0125): the metrics equal the float32 computation for both map dtypes; a
    float16 store keeps them from before the cast, and its cache reuses them."""
    rd = tmp_path / "r"
    save_index(write_dataset(rd / "data" / "tgt"), rd / "index" / "tgt")
    cfg = make_cfg()
    cfg.evaluation.map_dtype = dtype
    loads: list[str] = []

    def load_model(cfg, direction, variant, rd):
        loads.append(variant)
        return FlatStandIn()

    per_class = run_protocol(cfg, results_dir=rd, variants=["plain"], load_model=load_model)
    got = per_class.set_index(["cls", "metric"])["value"]
    index = load_index(rd / "index" / "tgt")
    rounding_shift = 0.0
    for cls in ("a", "b"):
        full = expected_class_values(index, cls, flat=True)
        half = expected_class_values(index, cls, flat=True, dtype=np.float16)
        for metric, value in full.items():
            assert got[(cls, metric)] == pytest.approx(value, abs=1e-12), (cls, metric)
            rounding_shift = max(rounding_shift, abs(half[metric] - value))
        # AUPRO and F1-max too: the metric functions on the float32 maps, not on float16 ones
        _, maps32, masks = class_arrays(index, cls, flat=True)
        pix32 = pixel_metrics(masks, maps32, ["anomalyclip", "exact"], 0.3, device="cpu").values
        _, maps16, _ = class_arrays(index, cls, flat=True, dtype=np.float16)
        pix16 = pixel_metrics(masks, maps16, ["anomalyclip", "exact"], 0.3, device="cpu").values
        for metric in ("pixel_aupro_anomalyclip", "pixel_aupro_exact", "pixel_f1_max"):
            assert got[(cls, metric)] == pytest.approx(pix32[metric], abs=1e-12), (cls, metric)
            rounding_shift = max(rounding_shift, abs(pix16[metric] - pix32[metric]))
    assert rounding_shift > 1e-4  # float16 maps would have moved the metrics: the test can fail
    store = MapStore(ResultsLayout.at(rd).maps_dir("aux_to_tgt", "plain", "tgt"), dtype)
    first = store.scores()["image_id"].iloc[0]
    assert store.read_map(first).dtype == np.dtype(dtype)
    assert store.manifest()["dtype"] == dtype
    assert (store.root / "full_precision").is_dir() == (dtype == "float16")
    again = run_protocol(cfg, results_dir=rd, variants=["plain"], load_model=load_model)
    assert loads == ["plain"]  # cached: no second inference
    pd.testing.assert_frame_equal(again, per_class)
    cfg.evaluation.fpr_limit = 0.2  # other metric settings: float16 maps must be inferred again
    run_protocol(cfg, results_dir=rd, variants=["plain"], load_model=load_model)
    assert loads == (["plain"] if dtype == "float32" else ["plain", "plain"])
