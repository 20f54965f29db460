"""From builder entries to a checked :class:`~hxpe.data.index.DatasetIndex`.

Every image is fully decoded (truncated files are caught), every mask is checked against its image's
size and for binary values, and every image file is hashed (sha256), in one pass with a progress bar.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hxpe.data.checks import (
    check_mask_matches,
    image_size,
    relative_posix,
    report_non_binary,
)
from hxpe.data.errors import DatasetError
from hxpe.data.index import INDEX_COLUMNS, DatasetIndex, make_image_id, validate_frame
from hxpe.data.layout import Entry
from hxpe.hashing import file_sha256
from hxpe.progress import progress

logger = logging.getLogger(__name__)


def entries_to_index(entries: Sequence[Entry], root: Path, name: str, kind: str) -> DatasetIndex:
    """Check and hash every entry; return the index (paths relative to ``root``)."""
    if not entries:
        raise DatasetError(
            f"No images found for dataset {name!r} under {root}. Check --root and the dataset kind "
            f"{kind!r}."
        )
    rows, non_binary = [], []
    for e in progress(entries, desc=f"{name}: checking images", unit="img"):
        image = relative_posix(e.image, root)
        mask = relative_posix(e.mask, root) if e.mask is not None else ""
        if e.mask is not None:
            if not check_mask_matches(e.image, e.mask):
                non_binary.append(e.mask)
        else:
            image_size(e.image)
        rows.append(
            {
                "image_id": make_image_id(name, e.cls, e.split, e.defect_type, image),
                "dataset": name,
                "cls": e.cls,
                "split": e.split,
                "label": e.label,
                "defect_type": e.defect_type,
                "image": image,
                "mask": mask,
                "sha256": file_sha256(e.image),
            }
        )
    report_non_binary(non_binary, name)
    frame = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    try:
        frame = validate_frame(frame)
    except ValueError as err:
        raise DatasetError(f"Index of {name!r} under {root} is inconsistent: {err}") from err
    return DatasetIndex(name=name, root=root, frame=frame, kind=kind)
