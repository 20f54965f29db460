"""The Makefile reruns exactly the stages an edit concerns (`make -n` on a copy with fake-old outputs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hxpe.paths import repo_root
from hxpe.pipeline import STAGES

OLD = 1_000_000_000  # 2001: every source file
STAGE_ORDER = list(STAGES)


@pytest.fixture
def repo(tmp_path) -> Path:
    """Makefile, notebooks, params and package in a temp dir; outputs newer than every source."""
    root = repo_root()
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(root / name, tmp_path / name)
    for name in ("notebooks", "hxpe"):
        shutil.copytree(root / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for p in tmp_path.rglob("*"):
        os.utime(p, (OLD, OLD))
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()
    out = tmp_path / "results" / "demo"
    out.mkdir(parents=True)
    for k, stage in enumerate(STAGE_ORDER):
        f = out / STAGES[stage].notebook
        f.write_text("{}")
        os.utime(f, (OLD + 100 + k, OLD + 100 + k))
    return tmp_path


def stages_make_would_run(repo: Path, touched: str) -> list[str]:
    (repo / touched).touch()
    done = subprocess.run(
        ["make", "-n", "-C", str(repo), "--no-print-directory", "figures"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HXPE_RESULTS_ROOT": str(repo / "results")},  # the copy's own results
    )
    return [s for s in STAGE_ORDER if f" stage {s} " in done.stdout]


def test_nothing_reruns_when_nothing_changed(repo):
    assert stages_make_would_run(repo, "results/demo/06_explainability_figures.ipynb") == []


@pytest.mark.parametrize(
    "touched",
    ["hxpe/figures/panels.py", "hxpe/figures/config.py", "hxpe/explorer.py", "hxpe/predict.py"],
)
def test_figure_code_reruns_stage_06(repo, touched):
    assert stages_make_would_run(repo, touched) == ["figures"]


def test_inference_code_reruns_evaluation_not_training(repo):
    assert stages_make_would_run(repo, "hxpe/model/inference.py") == ["evaluate", "figures"]


def test_model_code_reruns_training(repo):
    assert stages_make_would_run(repo, "hxpe/model/model.py") == ["train", "evaluate", "figures"]


def test_equation_checks_rerun_training(repo):
    # notebook 04 checks its equations with hxpe/equations.py (notebook 05 renders AUPRO's)
    assert stages_make_would_run(repo, "hxpe/equations.py") == ["train", "evaluate", "figures"]


def test_results_layout_edits_rerun_every_stage(repo):
    assert stages_make_would_run(repo, "hxpe/results_layout.py") == STAGE_ORDER


def test_template_edits_rerun_both_agent_stages(repo):
    ran = stages_make_would_run(repo, "hxpe/agent/templates/extract_v1.yaml")
    assert ran == ["describe", "extract", "train", "evaluate", "figures"]


@pytest.mark.parametrize(
    ("args", "params"),
    [([], "notebooks/params/paper.yaml"), (["PROFILE=dryrun"], "notebooks/params/dryrun.yaml")],
)
def test_fetch_models_defaults_to_the_paper_profile(repo, args, params):
    done = subprocess.run(
        ["make", "-n", "-C", str(repo), "--no-print-directory", "fetch-models", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"hxpe.cli fetch-models --params {params}" in done.stdout


def test_lab_allows_root_only_as_root(repo):
    done = subprocess.run(
        ["make", "-n", "-C", str(repo), "--no-print-directory", "lab"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "jupyter lab --notebook-dir=notebooks" in done.stdout
    assert ("--allow-root" in done.stdout) == (os.getuid() == 0)
