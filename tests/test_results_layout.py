"""ResultsLayout: every path under results/<profile>/ (the directory contract of ARCHITECTURE.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hxpe.config import load_config
from hxpe.data.fixtures import IndexWriter
from hxpe.data.index import save_index
from hxpe.paths import RESULTS_ROOT_ENV, repo_root
from hxpe.pipeline import STAGES
from hxpe.results_layout import ResultsLayout, bench_dir, folder_name, models_lock

ROOT = Path("/runs")
LAYOUT = ResultsLayout("paper", ROOT)


@pytest.mark.parametrize(
    ("path", "relative"),
    [
        (LAYOUT.data_root, "data"),
        (LAYOUT.data_dir("demo_target"), "data/demo_target"),
        (LAYOUT.index_root, "index"),
        (LAYOUT.index_dir("visa"), "index/visa"),
        (LAYOUT.dataset_info("visa"), "index/visa/dataset.json"),
        (LAYOUT.agent_dir, "agent"),
        (LAYOUT.descriptions(), "agent/descriptions.jsonl"),
        (LAYOUT.extractions(), "agent/extractions.jsonl"),
        (LAYOUT.descriptions("none"), "agent/descriptions_noref.jsonl"),
        (LAYOUT.extractions("none"), "agent/extractions_noref.jsonl"),
        (LAYOUT.checkpoints_root, "checkpoints"),
        (LAYOUT.checkpoint_dir("mvtec_to_visa", "hxpe"), "checkpoints/mvtec_to_visa/hxpe"),
        (LAYOUT.maps_root, "maps"),
        (LAYOUT.maps_dir("mvtec_to_visa", "hxpe", "visa"), "maps/mvtec_to_visa/hxpe/visa"),
        (LAYOUT.metrics_dir, "metrics"),
        (LAYOUT.metrics_file("per_class.csv"), "metrics/per_class.csv"),
        (LAYOUT.metrics_file("per_dataset.csv"), "metrics/per_dataset.csv"),
        (LAYOUT.metrics_file("skipped.csv"), "metrics/skipped.csv"),
        (LAYOUT.metrics_parts_dir, "metrics/parts"),
        (LAYOUT.metrics_part_dir("a_to_b", "hxpe", "b"), "metrics/parts/a_to_b/hxpe/b"),
        (LAYOUT.tables_dir, "tables"),
        (LAYOUT.figures_dir, "figures"),
        (LAYOUT.notebook("05_evaluation.ipynb"), "05_evaluation.ipynb"),
        (LAYOUT.manifest, "provenance.json"),
    ],
)
def test_each_path_lies_where_the_contract_says(path, relative):
    assert path == Path("/runs/paper") / relative
    assert LAYOUT.relative(path) == relative


def test_root_profile_and_at_round_trip():
    assert LAYOUT.root == Path("/runs/paper")
    assert LAYOUT.profile == "paper" and LAYOUT.results_root == ROOT
    assert ResultsLayout.at("/runs/paper") == LAYOUT
    assert LAYOUT.relative(LAYOUT.root) == ""
    assert repr(LAYOUT) == "ResultsLayout('paper', results_root='/runs')"


def test_agent_caches_pair_per_rule():
    assert LAYOUT.agent_caches("none") == (
        Path("/runs/paper/agent/descriptions_noref.jsonl"),
        Path("/runs/paper/agent/extractions_noref.jsonl"),
    )
    with pytest.raises(ValueError, match=r"unknown reference rule 'nearest'; use one of"):
        LAYOUT.agent_caches("nearest")


def test_stage_notebooks_and_outputs():
    layout = ResultsLayout("demo", ROOT)
    assert [layout.relative(layout.notebook(s.notebook)) for s in STAGES.values()] == [
        "01_data_prep.ipynb",
        "02_vlm_descriptions.ipynb",
        "03_llm_extraction.ipynb",
        "04_training.ipynb",
        "05_evaluation.ipynb",
        "06_explainability_figures.ipynb",
    ]
    outputs = {name: [layout.relative(p) for p in s.outputs(layout)] for name, s in STAGES.items()}
    assert outputs == {
        "data": ["index", "data"],
        "describe": ["agent/descriptions.jsonl", "agent/descriptions_noref.jsonl"],
        "extract": ["agent/extractions.jsonl", "agent/extractions_noref.jsonl"],
        "train": ["checkpoints"],
        "evaluate": ["metrics", "tables", "maps"],
        "figures": ["figures"],
    }


def test_default_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(RESULTS_ROOT_ENV, str(tmp_path / "elsewhere"))
    assert ResultsLayout("demo").root == tmp_path / "elsewhere" / "demo"
    assert load_config("notebooks/params/demo.yaml").results_dir == tmp_path / "elsewhere" / "demo"
    assert load_config("notebooks/params/demo.yaml").layout == ResultsLayout("demo")
    monkeypatch.delenv(RESULTS_ROOT_ENV)
    assert ResultsLayout("demo").root == repo_root() / "results" / "demo"


def test_per_checkout_outputs_stay_in_the_repository(monkeypatch, tmp_path):
    monkeypatch.setenv(RESULTS_ROOT_ENV, str(tmp_path))
    assert bench_dir() == repo_root() / "results" / "bench"
    assert models_lock() == repo_root() / "results" / "models.lock.json"


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../visa", "a\\b", " visa", "nul\0"])
def test_unsafe_names_are_refused_with_what_to_do(bad):
    message = (
        f"dataset name {bad!r} cannot name a folder under /runs/paper: it must be one path "
        "component (not empty, not '.' or '..', no '/' or '\\', no surrounding spaces). Rename "
        "the dataset name (params file or command line)."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        LAYOUT.index_dir(bad)


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda: LAYOUT.checkpoint_dir("..", "hxpe"), "direction '..'"),
        (lambda: LAYOUT.checkpoint_dir("a_to_b", "x/y"), "variant 'x/y'"),
        (lambda: LAYOUT.maps_dir("a_to_b", "hxpe", "../etc"), "dataset name '../etc'"),
        (lambda: LAYOUT.metrics_part_dir("a_to_b", "", "b"), "variant ''"),
        (lambda: LAYOUT.data_dir("a/../../b"), "dataset name 'a/../../b'"),
        (lambda: LAYOUT.notebook("../x.ipynb"), "notebook '../x.ipynb'"),
        (lambda: ResultsLayout("../demo", ROOT), "profile '../demo'"),
    ],
)
def test_every_name_that_becomes_a_folder_is_checked(call, what):
    with pytest.raises(ValueError, match=re.escape(f"{what} cannot name a folder under")):
        call()


def test_other_misuses_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown metrics file 'all.csv'; stage 05 writes"):
        LAYOUT.metrics_file("all.csv")
    with pytest.raises(ValueError, match=r"notebook '05_evaluation' must be an \.ipynb file name"):
        LAYOUT.notebook("05_evaluation")
    assert folder_name("aux_to_target", "direction") == "aux_to_target"


def test_dataset_info_is_the_file_save_index_writes(tmp_path):
    layout = ResultsLayout("demo", tmp_path)
    writer = IndexWriter(tmp_path / "images", "toy")
    writer.add("widget", "train", "good", "000", np.zeros((8, 8, 3), np.uint8))
    save_index(writer.index(), layout.index_dir("toy"))
    assert json.loads(layout.dataset_info("toy").read_text())["name"] == "toy"
    assert layout.dataset_infos() == [layout.dataset_info("toy")]


def test_globs_find_what_the_stages_wrote(tmp_path):
    layout = ResultsLayout("demo", tmp_path)
    for name in ("b", "a"):
        layout.dataset_info(name).parent.mkdir(parents=True)
        layout.dataset_info(name).write_text("{}")
        layout.checkpoint_dir("d", name).mkdir(parents=True)
        part = layout.metrics_part_dir("d", "hxpe", name)
        part.mkdir(parents=True)
        (part / "per_class.csv").write_text("")
    assert [layout.relative(p) for p in layout.dataset_infos()] == [
        "index/a/dataset.json",
        "index/b/dataset.json",
    ]
    assert [layout.relative(p) for p in layout.checkpoint_dirs()] == [
        "checkpoints/d/a",
        "checkpoints/d/b",
    ]
    assert [layout.relative(p) for p in layout.metrics_parts("per_class.csv")] == [
        "metrics/parts/d/hxpe/a/per_class.csv",
        "metrics/parts/d/hxpe/b/per_class.csv",
    ]
    assert layout.metrics_parts("skipped.csv") == []


# Path pieces only the layout may join onto a results directory.
LAYOUT_NAMES = r"(index|data|agent|checkpoints|maps|metrics|tables|figures|provenance\.json)"
JOINED = re.compile(rf"/\s*[\"']{LAYOUT_NAMES}[\"']")
NOT_RESULTS = {  # (file, text on the line): folders of the same name that are not under results/
    ("hxpe/evaluation/maps.py", 'self.root / "maps"'),  # a MapStore's own maps/ folder
    ("hxpe/gpu_smoke.py", 'work / "agent"'),  # the smoke check's scratch folder
}


def test_no_module_builds_results_paths_from_strings():
    """Only hxpe/results_layout.py joins the contract's folder names onto a path, and only it
    resolves a profile's directory; the rest ask it (doctest lines do not count)."""
    offenders = []
    for path in sorted((repo_root() / "hxpe").rglob("*.py")):
        rel = path.relative_to(repo_root()).as_posix()
        if rel == "hxpe/results_layout.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip().startswith((">>>", "...")):
                continue
            if JOINED.search(line) and not any(
                rel == f and text in line for f, text in NOT_RESULTS
            ):
                offenders.append(f"{rel}:{n}: {line.strip()}")
            if re.search(r"(?<!def )\bresults_dir\(", line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


def test_the_scan_catches_a_joined_results_path():
    assert JOINED.search('out = cfg.results_dir / "checkpoints" / direction')
    assert JOINED.search("root / 'provenance.json'")
    assert not JOINED.search('store.root / "scores.csv"')
