"""Stages 02-03 end to end on the demo backends: caching, resume after a kill, shards, replay, CLI."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from hxpe.agent import (
    load_descriptions,
    load_extractions,
    load_phrases,
    merge_shards,
    run_describe,
    run_extract,
)
from hxpe.agent.cache import read_records, stable_view
from hxpe.agent.cli import register
from hxpe.agent.config import AgentConfig
from hxpe.data.fixtures import planted_index

DEMO = {
    "describe": {
        "backend": "classical",
        "model_id": "hxpe-classical-differential",
        "batch_size": 1,
    },
    "extract": {"backend": "rules", "model_id": "hxpe-rules"},
}


def _cfg(**over) -> AgentConfig:
    raw = {k: dict(v) for k, v in DEMO.items()}
    for section, values in over.items():
        raw[section].update(values)
    return AgentConfig.model_validate(raw)


def _stable(path):
    return sorted((stable_view(r) for r in read_records(path)), key=lambda r: r["key"])


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return planted_index(tmp_path_factory.mktemp("planted"), n_good=3)


def test_describe_extract_phrases(index, tmp_path):
    cfg = _cfg()
    desc, ext = tmp_path / "agent/descriptions.jsonl", tmp_path / "agent/extractions.jsonl"
    report = run_describe([index], cfg, desc)
    assert (report.total, report.done, report.cached, report.failed) == (10, 10, 0, 0)
    assert report.throughput > 0
    frame = load_descriptions(desc)
    assert list(frame["image_id"]) == sorted(index.split("test")["image_id"])
    assert set(frame["reference_id"]) == {
        "planted/tile/train/good/000",
        "planted/wall/train/good/000",
    }
    good = frame[frame["image_id"].str.contains("/good/")]
    assert set(good["text"]) == {"No anomaly"}

    again = run_describe([index], cfg, desc)
    assert (again.done, again.cached) == (0, 10)
    assert len(read_records(desc)) == 10

    rep = run_extract(desc, cfg, ext)
    assert (rep.total, rep.done, rep.failed) == (10, 10, 0)
    phrases = load_phrases(ext)
    assert len(phrases) == 10
    assert all(v is None for k, v in phrases.items() if "/good/" in k)
    assert phrases["planted/wall/test/scratch/000"].endswith("on the upper left")
    assert "red" in phrases["planted/wall/test/spot/000"]
    table = load_extractions(ext)
    assert table["phrase_tokens"].max() <= 20
    assert table["provenance"].iloc[0]["template"]["id"] == "extract_v1"


def test_changed_settings_make_new_records(index, tmp_path):
    desc = tmp_path / "d.jsonl"
    run_describe([index], _cfg(), desc)
    report = run_describe([index], _cfg(describe={"options": {"k": 9.0}}), desc)
    assert report.done == 10 and len(read_records(desc)) == 20
    assert len(load_descriptions(desc)) == 10
    assert load_descriptions(desc, settings_hash=report.settings_hash)["key"].nunique() == 10


def test_shards_plus_merge_equal_one_run(index, tmp_path):
    cfg = _cfg()
    single, sharded = tmp_path / "one/d.jsonl", tmp_path / "many/d.jsonl"
    run_describe([index], cfg, single)
    totals = [run_describe([index], cfg, sharded, shard=(i, 3)).total for i in (2, 0, 1)]
    assert sum(totals) == 10 and not sharded.exists()
    assert merge_shards(sharded) == 10
    assert _stable(sharded) == _stable(single)
    assert sharded.read_text().count("\n") == 10
    # the same for stage 03, from the merged descriptions
    e1, e3 = tmp_path / "one/e.jsonl", tmp_path / "many/e.jsonl"
    run_extract(single, cfg, e1)
    for i in range(3):
        run_extract(sharded, cfg, e3, shard=(i, 3))
    merge_shards(e3)
    assert _stable(e3) == _stable(e1)


def test_replay_reads_only_the_cache(index, tmp_path):
    desc, ext = tmp_path / "d.jsonl", tmp_path / "e.jsonl"
    run_describe([index], _cfg(), desc)
    run_extract(desc, _cfg(), ext)
    replay = _cfg(
        describe={"backend": "replay", "options": {"source": str(desc)}},
        extract={"backend": "replay", "options": {"source": str(ext)}},
    )
    copy_d, copy_e = tmp_path / "copy/d.jsonl", tmp_path / "copy/e.jsonl"
    assert run_describe([index], replay, copy_d).cached == 10
    assert run_extract(copy_d, replay, copy_e).cached == 10
    assert read_records(copy_d) == read_records(desc) and load_phrases(copy_e) == load_phrases(ext)
    wrong = _cfg(describe={"backend": "replay", "model_id": "Qwen/Qwen2-VL-72B-Instruct-AWQ"})
    with pytest.raises(KeyError, match="planted/tile/test/good/000"):
        run_describe([index], wrong, desc)


def test_no_reference_rule_describes_each_image_alone(index, tmp_path):
    path = tmp_path / "d_noref.jsonl"
    report = run_describe([index], _cfg(), path, reference_rule="none")
    assert (report.total, report.done, report.failed) == (10, 10, 0)
    frame = load_descriptions(path)
    assert set(frame["template_id"]) == {"describe_noref_v1"}
    assert frame["reference_id"].isna().all() and frame["reference_sha256"].isna().all()
    assert set(frame["reference_rule"]) == {"none"}
    with_ref = tmp_path / "d.jsonl"
    run_describe([index], _cfg(), with_ref)
    keys = set(load_descriptions(with_ref)["key"])
    assert keys.isdisjoint(frame["key"])  # template and reference are part of the key
    with pytest.raises(ValueError, match="noref_template: describe_noref_v1"):
        bad = _cfg(describe={"noref_template": "describe_v1"})
        run_describe([index], bad, tmp_path / "x.jsonl", reference_rule="none")


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from hxpe.agent import run_describe
    from hxpe.data.fixtures import planted_index
    from hxpe.agent.config import AgentConfig
    from pathlib import Path
    root, cache, cfg_json = sys.argv[1:4]
    index = planted_index(root, n_good=3)
    run_describe([index], AgentConfig.model_validate_json(cfg_json), Path(cache))
    """
)


def test_kill_and_resume_equals_uninterrupted_run(index, tmp_path):
    cfg = _cfg(describe={"options": {"work_size": 384}})  # slower, so the kill lands mid-run
    cache = tmp_path / "killed/d.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILL_SCRIPT,
            str(tmp_path / "data"),
            str(cache),
            cfg.model_dump_json(),
        ],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if cache.is_file() and cache.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(read_records(cache))
    assert 3 <= done_before < 10
    with open(cache, "ab") as fh:  # as if the kill had torn the line being written
        fh.write(b'{"key": "half a rec')
    index_here = planted_index(tmp_path / "data", n_good=3)
    report = run_describe([index_here], cfg, cache)
    assert report.cached == done_before and report.done == 10 - done_before
    reference = tmp_path / "clean/d.jsonl"
    run_describe([index_here], cfg, reference)
    assert _stable(cache) == _stable(reference)


def test_cli_parser():
    parser = argparse.ArgumentParser(prog="hxpe")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["describe", "--params", "p.yaml", "--shard", "2", "--num-shards", "4"]
    )
    assert (args.command, args.params, args.shard, args.num_shards, args.merge) == (
        "describe",
        "p.yaml",
        2,
        4,
        False,
    )
    args = parser.parse_args(["extract", "--merge"])
    assert args.merge and args.params == "notebooks/params/demo.yaml"
    assert args.func.__name__ == "cmd_extract"


def test_extract_one_gates_the_phrase_with_the_verdict():
    from hxpe.agent import extract_one
    from hxpe.agent.config import AgentConfig

    cfg = AgentConfig.model_validate(
        {"describe": {"backend": "classical"}, "extract": {"backend": "rules"}}
    )
    text = (
        "Image 2 differs from the normal brick in Image 1. There is a small thin line running "
        "vertically in the upper left of the image, covering about 1.0% of it. It is darker than the "
        "surrounding surface, black in colour, with a rougher texture. It looks like a scratch."
    )
    found = extract_one(text, cfg)
    assert found["status"] == "ok" and found["verdict"] is True
    assert "upper left" in found["phrase"]
    clean = extract_one("No anomaly", cfg)
    assert clean["verdict"] is False and clean["vlm_no_anomaly"] is True
