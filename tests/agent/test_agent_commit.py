"""Describe/extract commit by time as well as by count (issue 24): a slow batch no longer holds
its records until all of its items are done, so a kill loses at most ``commit_seconds`` of work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hxpe.agent.backend_base import Generation
from hxpe.agent.cache import JsonlCache
from hxpe.agent.config import ExtractConfig
from hxpe.agent.runner import FIRST_CALL, StageReport, next_call_size, run_stage


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs."""


def _run(
    tmp_path: Path, n: int, cfg: ExtractConfig, seconds_per_item: float, kill_after: int
) -> tuple[list[int], JsonlCache]:
    calls: list[int] = []

    def backend():  # type: ignore[no-untyped-def]
        def call(batch, sampling):  # type: ignore[no-untyped-def]
            if len(calls) == kill_after:
                raise Killed
            calls.append(len(batch))
            time.sleep(seconds_per_item * len(batch))
            return [Generation(f"out {item}") for item in batch]

        return call

    cache = JsonlCache(tmp_path / "cache.jsonl")
    report = StageReport("extract", cache.path, "hash")
    with pytest.raises(Killed):
        run_stage(
            [(f"k{i}", i) for i in range(n)],
            cache=cache,
            report=report,
            cfg=cfg,
            settings={},
            backend=backend,
            requests=lambda items: items,
            check=lambda gen: gen.text,
            fields=lambda item, out: {"item": item, "value": out.value, **out.record_fields()},
        )
    return calls, cache


def test_a_slow_batch_is_committed_in_calls_of_about_commit_seconds(tmp_path):
    """256 items at 10 ms each would take 2.6 s in one call; with commit_seconds 0.2 the calls are
    8 items (the first), then about 20, and the run killed in its fourth call keeps three calls'
    records instead of none."""
    cfg = ExtractConfig(backend="rules", batch_size=256, commit_seconds=0.2)
    calls, cache = _run(tmp_path, 256, cfg, seconds_per_item=0.01, kill_after=3)
    assert calls[0] == FIRST_CALL
    assert all(4 <= c <= 20 for c in calls[1:]), calls  # 0.2 s / 10 ms = 20 items (fewer if slow)
    records = cache.records()
    assert len(records) == sum(calls)
    assert [r["item"] for r in records] == list(range(sum(calls)))
    assert all(r["value"] == f"out {r['item']}" for r in records)


def test_a_fast_backend_still_gets_full_batches(tmp_path):
    cfg = ExtractConfig(backend="rules", batch_size=64, commit_seconds=120)
    calls, cache = _run(tmp_path, 200, cfg, seconds_per_item=0.0, kill_after=3)
    assert calls == [FIRST_CALL, 64, 64]
    assert len(cache.records()) == FIRST_CALL + 128


def test_next_call_size():
    assert next_call_size(8, 2.0, 256, 30.0) == 120  # 4 items/s for 30 s
    assert next_call_size(120, 60.0, 256, 30.0) == 60
    assert next_call_size(256, 1.0, 256, 30.0) == 256  # never above batch_size
    assert next_call_size(4, 100.0, 256, 30.0) == 1  # never below one item
    assert next_call_size(8, 0.0, 32, 30.0) == 32
    assert ExtractConfig().commit_seconds == 120.0
    with pytest.raises(ValueError, match="greater than 0"):
        ExtractConfig(commit_seconds=0)
