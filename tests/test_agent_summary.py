"""Notebook helpers: failure and verdict tables, the description figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from hxpe.agent import load_descriptions, load_extractions, run_describe, run_extract  # noqa: E402
from hxpe.agent.config import AgentConfig  # noqa: E402
from hxpe.agent.summary import (  # noqa: E402
    description_figure,
    failure_table,
    verdict_plot,
    verdict_table,
)
from hxpe.agent.testing import planted_index  # noqa: E402


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
