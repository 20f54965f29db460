"""Synthetic inputs of the benchmark: generated demo images, their phrases, repeated datasets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hxpe.data.config import DemoDataConfig
from hxpe.data.index import NORMAL_TYPE, DatasetIndex, make_image_id, select_references
from hxpe.data.torch_dataset import IndexDataset, index_batches

if TYPE_CHECKING:
    from hxpe.model.inference import InferenceInputs


def demo_index(
    root: Path, name: str, image_size: int, classes: list[str], **counts: int
) -> DatasetIndex:
    """Generate demo images (:mod:`hxpe.data.demo`) and index them (no hashing: not needed here)."""
    from hxpe.data.demo import DEFECTS_CSV, generate_demo_dataset

    cfg = DemoDataConfig.model_validate(
        {"image_size": image_size, "target_classes": classes, **counts}
    )
    data = generate_demo_dataset(root / name, "target", cfg)
    table = pd.read_csv(data / DEFECTS_CSV, keep_default_na=False)
    rows = [
        {
            "image_id": make_image_id(name, r.cls, r.split, r.defect_type, r.image),
            "dataset": name,
            "cls": r.cls,
            "split": r.split,
            "label": int(r.defect_type != NORMAL_TYPE),
            "defect_type": r.defect_type,
            "image": r.image,
            "mask": r.mask,
            "sha256": "",
        }
        for r in table.itertuples()
    ]
    return DatasetIndex(name=name, root=data, frame=pd.DataFrame(rows), kind="demo")


def demo_phrases(index: DatasetIndex) -> dict[str, str | None]:
    """A gated phrase per anomalous image (repeated across images of a defect type), None else."""
    out: dict[str, str | None] = {}
    for r in index.frame.itertuples():
        if r.label:
            out[r.image_id] = f"a {r.defect_type.replace('_', ' ')} on the {r.cls} surface"
        else:
            out[r.image_id] = None
    return out


def repeated(index: DatasetIndex, split: str, n: int) -> DatasetIndex:
    """The ``split`` rows cycled to ``n`` rows with distinct image ids (for dataset-size scans)."""
    base = index.split(split).reset_index(drop=True)
    rows = []
    for i in range(n):
        r = base.iloc[i % len(base)].to_dict()
        r["image_id"] = f"{r['image_id']}#{i}"
        rows.append(r)
    train = index.split("train")
    frame = pd.concat([pd.DataFrame(rows), train], ignore_index=True)
    return DatasetIndex(name=index.name, root=index.root, frame=frame, kind=index.kind)


def dataset_for(
    index: DatasetIndex, size: int, n: int | None, references: bool = True
) -> IndexDataset:
    idx = index if n is None else repeated(index, "test", n)
    phrases = {k.split("#")[0]: v for k, v in demo_phrases(index).items()}
    phrases = {r.image_id: phrases.get(r.image_id.split("#")[0]) for r in idx.frame.itertuples()}
    refs = select_references(idx) if references else None
    return IndexDataset(idx, size, "test", phrases, refs)


def model_batches(batches: Iterable[dict[str, Any]]) -> Iterator[InferenceInputs]:
    """A loader's collated batches as the inference paths read them (:func:`index_batches`).

    :class:`~hxpe.data.torch_dataset.IndexBatch` fulfils
    :class:`~hxpe.model.inference.InferenceInputs`, whose fields are read-only properties (so a
    ``list[str]`` field is a ``Sequence[str]``).
    """
    yield from index_batches(batches)
