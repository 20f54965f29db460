"""Two runs of the demo pipeline give identical metrics and agent caches (issue 9)."""

from __future__ import annotations

import pandas as pd
import pytest

from hxpe.agent import load_phrases, run_describe, run_extract
from hxpe.config import load_config
from hxpe.data import prepare_all
from hxpe.evaluation.protocol import run_protocol
from hxpe.paths import repo_root
from hxpe.seeding import seed_everything
from hxpe.train import train_all
from hxpe.verify import compare_runs

# The demo profile, trimmed to one trained variant and a few steps so that two runs take seconds.
OVERRIDES = {"train": {"epochs": 1, "max_steps": 4}}
VARIANTS = {"hxpe": {}, "winclip": {"base": "winclip"}}


def run_pipeline(root, monkeypatch):
    monkeypatch.setenv("HXPE_RESULTS_ROOT", str(root))
    return _run(root)


def _run(root):
    cfg = load_config(repo_root() / "notebooks" / "params" / "demo.yaml", OVERRIDES)
    cfg = cfg.model_copy(update={"variants": VARIANTS})
    seed_everything(cfg.seed, cfg.deterministic)
    descriptions, extractions = cfg.layout.agent_caches()
    indexes = prepare_all(cfg)
    run_describe(list(indexes.values()), cfg.agent, descriptions)
    run_extract(descriptions, cfg.agent, extractions)
    train_all(cfg, load_phrases(extractions))
    run_protocol(cfg)
    return cfg.results_dir


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_a")
    with pytest.MonkeyPatch.context() as mp:
        return run_pipeline(root, mp)


def test_two_demo_runs_compare_equal(first_run, tmp_path, monkeypatch):
    first = first_run
    second = run_pipeline(tmp_path / "b", monkeypatch)
    assert compare_runs(first, second) == []
    metrics = pd.read_csv(first / "metrics" / "per_class.csv")
    assert set(metrics["variant"]) == {"hxpe", "winclip"} and metrics["value"].notna().all()


def test_compare_runs_reports_a_changed_metric(first_run, tmp_path):
    first = first_run
    per_class = first / "metrics" / "per_class.csv"
    frame = pd.read_csv(per_class)
    (tmp_path / "b" / "metrics").mkdir(parents=True)
    frame.loc[0, "value"] += 0.01
    frame.to_csv(tmp_path / "b" / "metrics" / "per_class.csv", index=False)
    problems = compare_runs(first, tmp_path / "b")
    assert any("metric differs" in p for p in problems)
