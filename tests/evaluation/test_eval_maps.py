"""The per-image map store: round trip, float16, streaming, cache manifest."""

import numpy as np
import pytest
import torch

from hxpe.evaluation.maps import MapStore, safe_name


def test_safe_names_are_unique_and_safe() -> None:
    a, b = safe_name("d/c/test/bad type/001"), safe_name("d/c/test/bad_type/001")
    assert a != b
    assert "/" not in a and " " not in a


def test_round_trip_float16(tmp_path) -> None:
    store = MapStore(tmp_path / "s", "float16")
    rng = np.random.default_rng(0)
    maps = {
        f"ds/{c}/test/good/{i}": rng.random((16, 16)).astype(np.float32)
        for c in "ab"
        for i in range(3)
    }
    with store.writer(key="k1", dataset="ds") as w:
        for image_id, m in maps.items():
            cls = image_id.split("/")[1]
            vfm = torch.ones(4, 4) if cls == "a" else None
            w.add(
                image_id,
                torch.from_numpy(m),
                cls=cls,
                label=int(cls == "b"),
                image_score=m.max(),
                vfm_prompt=vfm,
            )
    assert store.is_complete("k1") and not store.is_complete("k2")
    scores = store.scores()
    assert list(scores.columns) == ["image_id", "cls", "label", "image_score", "file"]
    assert scores["image_score"].tolist() == pytest.approx([float(m.max()) for m in maps.values()])
    ids, stacked = store.class_maps("b")
    assert ids == [i for i in maps if "/b/" in i]
    assert stacked.dtype == np.float32
    for image_id, got in zip(ids, stacked, strict=True):
        assert store.read_map(image_id).dtype == np.float16
        np.testing.assert_array_equal(got, maps[image_id].astype(np.float16).astype(np.float32))
    assert store.read_vfm_prompt(ids[0]) is None
    assert store.read_vfm_prompt("ds/a/test/good/0").shape == (4, 4)
    assert store.manifest()["n_images"] == 6


def test_streaming_writes_reach_disk_before_the_end(tmp_path) -> None:
    store = MapStore(tmp_path / "s")
    with store.writer(key="k") as w:
        w.add("x/c/test/good/0", np.zeros((4, 4)), cls="c", label=0, image_score=0.0)
        w.flush()
        assert w.store.map_path("x/c/test/good/0").is_file()  # in the staging folder
        assert "x/c/test/good/0" in w.store.partial_scores_path.read_text()
        assert not store.is_complete("k") and not store.root.exists()  # not before it finishes
    assert store.is_complete("k")


def test_failed_run_leaves_no_complete_cache(tmp_path) -> None:
    store = MapStore(tmp_path / "s")
    with pytest.raises(RuntimeError), store.writer(key="k") as w:
        w.add("x/c/test/good/0", np.zeros((4, 4)), cls="c", label=0, image_score=0.0)
        raise RuntimeError("model crashed")
    assert not store.is_complete("k")
    with pytest.raises(FileNotFoundError, match="did not finish"):
        store.scores()


def test_bad_inputs_are_clear_errors(tmp_path) -> None:
    store = MapStore(tmp_path / "s", "float16")
    with store.writer(key="k") as w:
        with pytest.raises(ValueError, match="overflows float16"):
            w.add("x/c/test/good/0", np.full((2, 2), 1e6), cls="c", label=0, image_score=0.0)
        with pytest.raises(ValueError, match=r"\[H, W\]"):
            w.add("x/c/test/good/1", np.zeros((1, 2, 2)), cls="c", label=0, image_score=0.0)
        w.add("x/c/test/good/2", np.zeros((2, 2)), cls="c", label=0, image_score=0.0)
        with pytest.raises(ValueError, match="twice"):
            w.add("x/c/test/good/2", np.zeros((2, 2)), cls="c", label=0, image_score=0.0)
    with pytest.raises(KeyError, match="no maps"):
        store.class_maps("zzz")
    with pytest.raises(ValueError, match="float16 or float32"):
        MapStore(tmp_path, "int8")


def _complete_store(root, key: str, n: int = 3) -> dict[str, np.ndarray]:
    """A finished store of ``n`` maps (value i) under ``key``; returns them by image id."""
    maps = {f"x/c/test/good/{i}": np.full((4, 4), float(i), np.float32) for i in range(n)}
    with MapStore(root).writer(key=key) as w:
        for image_id, m in maps.items():
            w.add(image_id, m, cls="c", label=0, image_score=float(m.max()))
    return maps


def _assert_store_holds(store: MapStore, key: str, maps: dict[str, np.ndarray]) -> None:
    assert store.is_complete(key) and store.manifest()["n_images"] == len(maps)
    assert store.scores()["image_id"].tolist() == list(maps)
    for image_id, m in maps.items():
        np.testing.assert_array_equal(store.read_map(image_id), m)


def test_a_failed_run_keeps_the_previous_complete_store(tmp_path) -> None:
    store = MapStore(tmp_path / "s")
    before = _complete_store(store.root, "k1")
    with pytest.raises(RuntimeError, match="model crashed"), store.writer(key="k2") as w:
        w.add("x/c/test/good/0", np.ones((4, 4)), cls="c", label=0, image_score=1.0)
        raise RuntimeError("model crashed")
    _assert_store_holds(store, "k1", before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the staging folder is gone


KILLED_WRITER = """
import sys, time
import numpy as np
from hxpe.evaluation.maps import MapStore
with MapStore(sys.argv[1]).writer(key="k2") as w:
    for i in range(1000):
        w.add(f"x/c/test/good/{i}", np.full((4, 4), -1.0), cls="c", label=0, image_score=0.5)
        w.flush()
        time.sleep(0.01)
"""


def test_a_killed_run_keeps_the_previous_complete_store_and_a_rerun_completes(tmp_path) -> None:
    """``kill -9`` at a random moment of a run that is replacing a complete store."""
    import random
    import signal
    import subprocess
    import sys
    import time

    store = MapStore(tmp_path / "s")
    before = _complete_store(store.root, "k1")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(store.root)])
    staged = MapStore(store.staging_root)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((staged.root / "maps").glob("*.npy"))) < 3:
        time.sleep(0.02)
    time.sleep(random.Random(24).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert len(list((staged.root / "maps").glob("*.npy"))) >= 3  # it was killed mid-run
    _assert_store_holds(store, "k1", before)
    after = _complete_store(store.root, "k2", n=2)  # the rerun clears the leftovers and finishes
    _assert_store_holds(store, "k2", after)
    assert not staged.root.exists()


def test_reusing_a_store_discards_what_a_killed_run_staged(tmp_path) -> None:
    store = MapStore(tmp_path / "s")
    before = _complete_store(store.root, "k1")
    (store.staging_root / "maps").mkdir(parents=True)
    (store.staging_root / "maps" / "x.npy").write_bytes(b"half a run")
    store.discard_staging()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    _assert_store_holds(store, "k1", before)
