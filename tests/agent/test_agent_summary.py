"""Notebook helpers: failure and verdict tables, the description figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from hxpe.agent import load_descriptions, load_extractions, run_describe, run_extract  # noqa: E402
from hxpe.agent.config import AgentConfig  # noqa: E402
from hxpe.agent.summary import (  # noqa: E402
    description_figure,
    failure_table,
    verdict_plot,
    verdict_table,
)
from hxpe.data.fixtures import planted_index  # noqa: E402


def test_tables_and_figure(tmp_path):
    index = planted_index(tmp_path / "data", n_good=1)
    cfg = AgentConfig.model_validate(
        {"describe": {"backend": "classical"}, "extract": {"backend": "rules"}}
    )
    run_describe([index], cfg, tmp_path / "d.jsonl")
    run_extract(tmp_path / "d.jsonl", cfg, tmp_path / "e.jsonl")
    desc, ext = load_descriptions(tmp_path / "d.jsonl"), load_extractions(tmp_path / "e.jsonl")
    fails = failure_table(desc)
    assert fails.to_dict("records") == [{"dataset": "planted", "outcome": "ok", "n": 6}]
    verdicts = verdict_table(ext).set_index("cls")
    assert verdicts.loc["wall", "anomalous"] == 2 and verdicts.loc["wall", "normal"] == 1
    assert verdict_plot(ext).get_title() == "Stage 03 verdicts"
    fig = description_figure(desc, {"planted": index}, n=3)
    assert len(fig.axes) == 9


def test_verdicts_against_the_ground_truth():
    from pathlib import Path

    from hxpe.agent.summary import verdict_truth, verdict_truth_figure
    from hxpe.data.index import DatasetIndex

    index = DatasetIndex(
        "d", Path("."), pd.DataFrame({"image_id": list("abcde"), "label": [1, 1, 1, 0, 0]})
    )
    records = pd.DataFrame(
        {
            "dataset": ["d"] * 5,
            "image_id": list("abcde"),
            "status": ["ok", "ok", "failed", "ok", "ok"],
            "verdict": [True, False, None, True, False],
        }
    )
    table = verdict_truth(records, {"d": index})
    assert table.loc["anomalous"].tolist() == [1, 1, 1]  # judged anomalous, normal, failed
    assert table.loc["normal"].tolist() == [1, 1, 0]
    fig = verdict_truth_figure(table)
    assert "precision 0.50, recall 0.33" in fig.axes[0].get_title()
    with pytest.raises(KeyError, match="no index of dataset 'x'"):
        verdict_truth(records.assign(dataset="x"), {"d": index})
