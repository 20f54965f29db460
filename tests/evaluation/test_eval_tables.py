"""Tables: published numbers as data, summaries with deltas, demo banner, markdown."""

from pathlib import Path

import pandas as pd
import pytest

from hxpe.evaluation.published import PUBLISHED_TABLES, load_published
from hxpe.evaluation.results import merge_metrics, write_part
from hxpe.evaluation.tables import DEMO_NOTE, summary_table, to_markdown, write_tables

METRICS = {
    "image_auroc": 0.9,
    "image_ap": 0.8,
    "image_f1_max": 0.85,
    "pixel_auroc": 0.95,
    "pixel_ap": 0.4,
    "pixel_f1_max": 0.45,
    "pixel_aupro_anomalyclip": 0.7,
    "pixel_aupro_exact": 0.6,
}


def fake_results(rd: Path) -> None:
    """Two classes per dataset; class values differ by ±0.02 so the class mean equals METRICS."""
    units = [
        ("mvtec_to_others", "hxpe", "visa"),
        ("visa_to_mvtec", "hxpe", "mvtec"),
        ("aux_to_target", "hxpe", "demo_target"),
        ("visa_to_mvtec", "no_vfm", "mvtec"),
    ]
    for direction, variant, dataset in units:
        shift = -0.1 if variant == "no_vfm" else 0.0
        rows = [
            (dataset, cls, m, v + shift + d)
            for cls, d in (("x", 0.02), ("y", -0.02))
            for m, v in METRICS.items()
        ]
        per_class = pd.DataFrame(rows, columns=["dataset", "cls", "metric", "value"])
        skipped = pd.DataFrame(columns=["dataset", "cls", "metric", "reason"])
        write_part(rd, direction, variant, dataset, per_class, skipped)
    merge_metrics(rd)


@pytest.mark.parametrize("name", PUBLISHED_TABLES)
def test_published_files_cite_source_and_parse(name: str) -> None:
    t = load_published(name)
    assert t.source["arxiv"] and "Table 1" in t.source["table"] and t.caveats
    assert set(t.frame["dataset"]) <= set(t.rows)


def test_published_values_match_the_papers() -> None:
    ada = load_published("adaclip_table1")
    assert ada.value("AdaCLIP", "ksdd", "image_auroc") == 97.1
    assert ada.value("AdaCLIP", "average", "pixel_f1_max") == 50.2
    ac = load_published("anomalyclip_table1")
    assert ac.value("AnomalyCLIP", "mvtec", "pixel_aupro") == 81.4
    assert ac.value("WinCLIP", "btad", "pixel_aupro") == 27.3
    assert ac.value("CoOp", "dtd", "image_auroc") is None
    assert sorted(ac.methods) == sorted(
        ["CLIP", "CLIP-AC", "WinCLIP", "VAND", "CoOp", "AnomalyCLIP"]
    )


def test_summary_has_ours_published_and_deltas(tmp_path: Path) -> None:
    fake_results(tmp_path)
    per_dataset = pd.read_csv(tmp_path / "metrics" / "per_dataset.csv")
    table = summary_table(per_dataset, load_published("anomalyclip_table1"), "hxpe").set_index(
        "dataset"
    )
    assert table.loc["mvtec", "image_auroc (ours)"] == pytest.approx(90.0)
    assert table.loc["mvtec", "image_auroc (AnomalyCLIP)"] == 91.5
    assert table.loc["mvtec", "image_auroc (Δ)"] == pytest.approx(-1.5)
    assert table.loc["visa", "pixel_aupro (ours)"] == pytest.approx(70.0)  # anomalyclip convention
    assert pd.isna(table.loc["demo_target", "image_auroc (AnomalyCLIP)"])
    # Average: published mean over the matched datasets only (MVTec, VisA).
    assert table.loc["average", "image_auroc (AnomalyCLIP)"] == pytest.approx((91.5 + 82.1) / 2)
    exact = summary_table(per_dataset, load_published("anomalyclip_table1"), "hxpe", aupro="exact")
    assert exact.set_index("dataset").loc["visa", "pixel_aupro (ours)"] == pytest.approx(60.0)


def test_write_tables_demo_banner_and_files(tmp_path: Path) -> None:
    fake_results(tmp_path)
    paths = write_tables(tmp_path, profile="demo", main_variant="hxpe")
    names = {p.name for p in paths}
    assert {"per_class.csv", "per_class.md", "ablation.md", "summary_adaclip_table1.md"} <= names
    summary = (tmp_path / "tables" / "summary_adaclip_table1.md").read_text()
    assert DEMO_NOTE in summary and "2407.15795" in summary
    assert "| 89.2 |" in summary and "nan" not in summary.lower()
    ablation = pd.read_csv(tmp_path / "tables" / "ablation.csv").set_index("variant")
    assert ablation.loc["no_vfm", "image_auroc"] == pytest.approx(80.0)
    per_class = pd.read_csv(tmp_path / "tables" / "per_class.csv")
    assert per_class["image_auroc"].max() == pytest.approx(92.0)
    paper = write_tables(tmp_path, profile="paper", main_variant="hxpe")
    assert DEMO_NOTE not in Path(paper[1]).read_text()


def test_markdown_prints_missing_as_dash() -> None:
    md = to_markdown(pd.DataFrame({"a": [1.234, float("nan")], "b": ["x", None]}))
    assert md.splitlines()[2] == "| 1.2 | x |"
    assert md.splitlines()[3] == "| – | – |"


def test_random_weight_tables_say_so(tmp_path):
    from hxpe.evaluation.tables import RANDOM_WEIGHTS_NOTE

    per_class = pd.DataFrame(
        [("visa", "candle", "image_auroc", 0.5)], columns=["dataset", "cls", "metric", "value"]
    )
    skipped = pd.DataFrame(columns=["dataset", "cls", "metric", "reason"])
    write_part(tmp_path, "mvtec_to_others", "hxpe", "visa", per_class, skipped)
    merge_metrics(tmp_path)
    paths = write_tables(tmp_path, profile="dryrun", main_variant="hxpe", random_weights=True)
    md = [p for p in paths if p.suffix == ".md"]
    assert md and all(RANDOM_WEIGHTS_NOTE in p.read_text() for p in md)
    assert DEMO_NOTE not in md[0].read_text()


def test_tables_state_splits_precision_and_baselines(tmp_path: Path) -> None:
    """Each table says per dataset which split was used and from which precision the metrics
    come; a baseline variant gets its row beside its published column."""
    import json

    from hxpe.evaluation.tables import BASELINE_NOTES, PRECISION_NOTES

    fake_results(tmp_path)
    rows = [(d, "x", m, v - 0.2) for d in ("mvtec", "dagm") for m, v in METRICS.items()]
    per_class = pd.DataFrame(rows, columns=["dataset", "cls", "metric", "value"])
    empty = pd.DataFrame(columns=["dataset", "cls", "metric", "reason"])
    dagm, mvtec = (per_class[per_class["dataset"] == d] for d in ("dagm", "mvtec"))
    write_part(tmp_path, "mvtec_to_others", "winclip", "dagm", dagm, empty)
    write_part(tmp_path, "visa_to_mvtec", "winclip", "mvtec", mvtec, empty)
    write_part(tmp_path, "mvtec_to_others", "hxpe", "dagm", dagm, empty)
    merge_metrics(tmp_path)
    split = {"source": "authors", "text": "prepared by the authors: AdaCLIP's DAGM", "note": "N1"}
    (tmp_path / "index" / "dagm").mkdir(parents=True)
    (tmp_path / "index" / "dagm" / "dataset.json").write_text(json.dumps({"split": split}))
    (tmp_path / "index" / "mvtec").mkdir(parents=True)
    official = {"source": "official", "text": "the official release's split", "note": ""}
    (tmp_path / "index" / "mvtec" / "dataset.json").write_text(json.dumps({"split": official}))
    paths = write_tables(
        tmp_path,
        profile="paper",
        main_variant="hxpe",
        map_dtype="float16",
        baselines={"winclip": "WinCLIP"},
    )
    names = {p.name for p in paths}
    assert "summary_anomalyclip_table1_winclip.md" in names
    assert "summary_adaclip_table1_winclip.md" not in names  # no WinCLIP column transcribed
    for p in paths:
        if p.suffix == ".md":
            text = p.read_text()
            assert (
                "Splits: dagm: prepared by the authors: AdaCLIP's DAGM; demo_target: not recorded"
            ) in text
            assert "mvtec: the official release's split" in text and "> N1" in text
            assert PRECISION_NOTES["float16"] in text
    win = pd.read_csv(tmp_path / "tables" / "summary_anomalyclip_table1_winclip.csv")
    win = win.set_index("dataset")
    assert win.loc["dagm", "image_auroc (ours)"] == pytest.approx(70.0)
    assert win.loc["dagm", "image_auroc (WinCLIP)"] == 91.8
    assert win.loc["dagm", "image_auroc (Δ)"] == pytest.approx(70.0 - 91.8)
    md = (tmp_path / "tables" / "summary_anomalyclip_table1_winclip.md").read_text()
    assert BASELINE_NOTES["WinCLIP"] in md
    with pytest.raises(ValueError, match="map_dtype must be one of"):
        write_tables(tmp_path, profile="paper", main_variant="hxpe", map_dtype="int8")


def test_table_options_from_the_profiles() -> None:
    from hxpe.config import load_config
    from hxpe.evaluation.tables import table_options

    paper = table_options(load_config(Path("notebooks/params/paper.yaml")))
    assert paper["map_dtype"] == "float32" and paper["baselines"] == {"winclip": "WinCLIP"}
    demo = table_options(load_config(Path("notebooks/params/demo.yaml")))
    assert demo["map_dtype"] == "float16" and demo["profile"] == "demo"


def test_ablation_rows_say_what_they_switch_including_the_no_reference_row(tmp_path: Path) -> None:
    from hxpe.config import load_config
    from hxpe.evaluation.tables import variant_columns

    settings = variant_columns(load_config("notebooks/params/paper.yaml"))
    assert settings["hxpe_noref"] == {
        "base": "adaclip",
        "recipe": "hxpe",
        "explain": "in_prompt",
        "dinov2": "attn_bias",
        "reference": "none",
    }
    assert settings["hxpe"]["reference"] == "first_normal_train"
    assert settings["hxpe_reweight"]["dinov2"] == "reweight"
    assert settings["adaclip"] | {"base": "x"} == {
        "base": "x",
        "recipe": "adaclip",
        "explain": "off",
        "dinov2": "off",
        "reference": "first_normal_train",
    }
    fake_results(tmp_path)
    labels = {"hxpe": settings["hxpe"], "no_vfm": settings["hxpe_noref"]}
    write_tables(tmp_path, profile="demo", main_variant="hxpe", variants=labels)
    ablation = pd.read_csv(tmp_path / "tables" / "ablation.csv")
    assert list(ablation.columns[:7]) == [
        "direction",
        "variant",
        "base",
        "recipe",
        "explain",
        "dinov2",
        "reference",
    ]
    row = ablation.set_index("variant").loc["no_vfm"]
    assert row["reference"] == "none" and row["image_auroc"] == pytest.approx(80.0)
