"""The append-only cache: atomic appends, torn-line repair, shards and merging."""

from __future__ import annotations

import json

import pytest

from hxpe.agent.cache import (
    JsonlCache,
    content_hash,
    in_shard,
    merge_shards,
    read_records,
    shard_files,
    shard_path,
    stable_view,
)


def _rec(i: int) -> dict:
    return {"key": f"k{i:02d}", "image_id": f"d/c/test/good/{i:03d}", "text": f"t{i}"}


def test_append_and_read_roundtrip(tmp_path):
    cache = JsonlCache(tmp_path / "a.jsonl")
    cache.append([_rec(1), _rec(2)])
    cache.append([_rec(3)])
    assert [r["key"] for r in read_records(cache.path)] == ["k01", "k02", "k03"]
    assert cache.path.read_bytes().endswith(b"\n")
    assert cache.keys() == {"k01", "k02", "k03"}


def test_torn_last_line_is_ignored_then_repaired(tmp_path):
    path = tmp_path / "a.jsonl"
    cache = JsonlCache(path)
    cache.append([_rec(1)])
    with open(path, "ab") as fh:  # what a kill in the middle of a write leaves
        fh.write(b'{"key": "k02", "ima')
    assert [r["key"] for r in read_records(path)] == ["k01"]
    cache.append([_rec(3)])
    lines = path.read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["k01", "k03"]


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"key": "k1"}\nnot json\n{"key": "k2"}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:2"):
        read_records(path)


def test_shards_partition_image_ids_deterministically():
    ids = [f"d/c/test/good/{i:03d}" for i in range(200)]
    parts = [[i for i in ids if in_shard(i, (s, 3))] for s in range(3)]
    assert sorted(sum(parts, [])) == ids  # a partition: every id in exactly one shard
    assert all(20 < len(p) < 110 for p in parts)
    assert parts[1] == [i for i in ids if in_shard(i, (1, 3))]
    with pytest.raises(ValueError, match="0 <= i < n"):
        in_shard("x", (3, 3))


def test_shard_path_and_merge(tmp_path):
    main = tmp_path / "descriptions.jsonl"
    assert shard_path(main, (0, 1)) == main
    assert shard_path(main, (2, 4)).name == "descriptions.shard-2-of-4.jsonl"
    JsonlCache(main).append([_rec(1)])
    JsonlCache(main, (1, 2)).append([_rec(5), _rec(1)])  # k01 duplicates the main file
    JsonlCache(main, (0, 2)).append([_rec(4), _rec(2)])
    assert [p.name for p in shard_files(main)] == [
        "descriptions.shard-0-of-2.jsonl",
        "descriptions.shard-1-of-2.jsonl",
    ]
    assert merge_shards(main) == 3
    assert [r["key"] for r in read_records(main)] == ["k01", "k02", "k04", "k05"]
    assert merge_shards(main, remove=True) == 0  # idempotent
    assert shard_files(main) == []


def test_shard_cache_sees_main_file(tmp_path):
    main = tmp_path / "x.jsonl"
    JsonlCache(main).append([_rec(1)])
    shard = JsonlCache(main, (0, 2))
    assert shard.keys() == {"k01"}
    shard.append([_rec(2)])
    assert [r["key"] for r in read_records(main)] == ["k01"]


def test_content_hash_and_stable_view():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    rec = {"key": "k", "text": "x", "provenance": {"host": "h"}, "timing": {"seconds": 1}}
    assert stable_view(rec) == {"key": "k", "text": "x"}


def _append_one_by_one(path, shard: tuple[int, int], n: int) -> None:
    cache = JsonlCache(path, shard)
    for k in range(n):
        cache.append([{"key": f"s{shard[0]}-{k}", "image_id": f"img/{shard[0]}/{k:04d}"}])


def test_a_merge_racing_writers_loses_no_record(tmp_path):
    """Two writers append one record at a time, one to the main file and one to a shard, while
    merges (removing the shard) run in a tight loop: every record ends up in the main file once."""
    import multiprocessing

    path = tmp_path / "descriptions.jsonl"
    n = 200
    fork = multiprocessing.get_context("fork")  # separate processes, each with its own descriptors
    writers = [
        fork.Process(target=_append_one_by_one, args=(path, shard, n)) for shard in ((0, 1), (1, 2))
    ]
    for w in writers:
        w.start()
    merges = 0
    while any(w.is_alive() for w in writers):
        merge_shards(path, remove=True)
        merges += 1
    for w in writers:
        w.join()
    assert [w.exitcode for w in writers] == [0, 0]
    merge_shards(path, remove=True)
    keys = [r["key"] for r in read_records(path)]
    assert sorted(keys) == sorted(f"s{i}-{k}" for i in (0, 1) for k in range(n))
    assert shard_files(path) == [] and merges > 10
