"""Per-class counts of an index against the official release's (``datasets.yaml``)."""

from __future__ import annotations

import logging

import pandas as pd

from hxpe.data.errors import DatasetError
from hxpe.data.index import DatasetIndex
from hxpe.data.spec import COUNT_COLUMNS, ExpectedCounts

logger = logging.getLogger(__name__)


def count_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per class: ``train_normal``, ``test_normal``, ``test_anomalous`` (other splits ignored)."""
    keys = {
        "train_normal": (frame["split"] == "train") & (frame["label"] == 0),
        "test_normal": (frame["split"] == "test") & (frame["label"] == 0),
        "test_anomalous": (frame["split"] == "test") & (frame["label"] == 1),
    }
    table = pd.DataFrame({k: m.groupby(frame["cls"]).sum() for k, m in keys.items()})
    return table.reindex(columns=list(COUNT_COLUMNS)).fillna(0).astype(int)


def count_mismatches(index: DatasetIndex, expected: ExpectedCounts) -> list[str]:
    """One line per class whose counts differ from the release's (classes absent there skipped)."""
    table = count_table(index.frame)
    lines = []
    for cls, row in table.iterrows():
        want = expected.classes.get(str(cls))
        got = tuple(int(v) for v in row)
        if want is not None and got != want:
            pairs = ", ".join(
                f"{c} {g} (official {w})" for c, g, w in zip(COUNT_COLUMNS, got, want, strict=True)
            )
            lines.append(f"class {cls!r}: {pairs}")
    return lines


def check_counts(index: DatasetIndex, expected: ExpectedCounts | None, allow: bool) -> None:
    """Raise on a mismatch with verified counts unless ``allow``; otherwise log a warning."""
    if expected is None:
        logger.info("%s: no official per-class counts recorded; count check skipped", index.name)
        return
    lines = count_mismatches(index, expected)
    if not lines:
        return
    text = "; ".join(lines)
    if expected.verified and not allow:
        raise DatasetError(
            f"Dataset {index.name!r} under {index.root} does not match the official release "
            f"({expected.source}): {text}. Re-download the missing files, or pass "
            f"--allow-count-mismatch (allow_count_mismatch: true) to index it anyway."
        )
    why = "allowed by allow_count_mismatch" if expected.verified else "counts not verified"
    logger.warning("%s: counts differ from %s (%s): %s", index.name, expected.source, why, text)
