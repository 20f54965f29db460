"""``hxpe check-equivalence`` on extra golden folders (other seeds, image sizes, batch sizes).

The folders come from ``tests/golden/make_golden.py`` (the authors' code on a random CLIP; see
``tests/golden/README.md``) and are listed in ``$HXPE_GOLDEN_EXTRA`` (``os.pathsep``-separated).
Without the variable the test is skipped with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hxpe.equivalence import check_folder

EXTRA = [p for p in os.environ.get("HXPE_GOLDEN_EXTRA", "").split(os.pathsep) if p]
EXPECTED_ROWS = {"anomalyclip": 20, "adaclip": 50, "adaclip[gelu]": 7}


@pytest.mark.skipif(
    not EXTRA,
    reason="HXPE_GOLDEN_EXTRA is unset: no extra golden folders to check (generate them with "
    "tests/golden/make_golden.py, see tests/golden/README.md)",
)
@pytest.mark.parametrize("folder", EXTRA, ids=[Path(p).name for p in EXTRA])
def test_extra_golden_folder_matches_the_authors_outputs(folder: str) -> None:
    rows = check_folder(folder)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.base] = counts.get(row.base, 0) + 1
    assert counts == EXPECTED_ROWS, f"{folder}: rows per base {counts}"
    failed = [row.line() for row in rows if not row.passed]
    assert not failed, f"{folder}: {len(failed)} of {len(rows)} out of tolerance:\n" + "\n".join(
        failed
    )
