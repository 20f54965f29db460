"""The raw-layout fixture trees (used by the paper-path dry run) index with the real builders."""

from __future__ import annotations

import pytest

from hxpe.data import prepare_dataset
from hxpe.data.config import DatasetSource
from hxpe.data.fixtures import RAW_KINDS, write_all_fixtures
from hxpe.data.registry import get_spec


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    return out, write_all_fixtures(out, image_size=64)


@pytest.mark.parametrize("kind", RAW_KINDS)
def test_fixture_indexes_with_both_labels(fixtures, kind):
    out, roots = fixtures
    options = {} if kind == "ksdd" else {"classes": list(get_spec(kind).classes[:2])}
    source = DatasetSource(name=kind, kind=kind, root=str(roots[kind]), options=options)
    index = prepare_dataset(source, out / "index" / kind, allow_count_mismatch=True)
    frame = index.frame
    test = frame[frame["split"] == "test"]
    assert set(test["label"]) == {0, 1}, f"{kind}: the test split needs normal and anomalous images"
    assert (frame["split"] == "train").any()
    anomalous = test[test["label"] == 1]
    assert (anomalous["mask"] != "").all()
    for rel in anomalous["mask"]:
        assert index.abs_path(rel).is_file()
