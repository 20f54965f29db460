"""Metric files of stage 05: one part per (direction, variant, dataset), merged into the tables' input.

Each protocol unit writes ``metrics/parts/<direction>/<variant>/<dataset>/{per_class,skipped}.csv``,
so shards running on different machines never write the same file; :func:`merge_metrics` gathers
every part into ``metrics/per_class.csv``, ``metrics/per_dataset.csv`` and ``metrics/skipped.csv``
(long format). Dataset value = unweighted mean over the classes where the metric is defined;
``n_classes`` says over how many.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from hxpe.atomic import write_text_atomic
from hxpe.results_layout import METRIC_FILES, ResultsLayout

logger = logging.getLogger(__name__)

PER_CLASS_COLUMNS = ["direction", "variant", "dataset", "cls", "metric", "value"]
PER_DATASET_COLUMNS = ["direction", "variant", "dataset", "metric", "value", "n_classes"]
SKIPPED_COLUMNS = ["direction", "variant", "dataset", "cls", "metric", "reason"]
PER_CLASS, PER_DATASET, SKIPPED = METRIC_FILES


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Atomic CSV write (temporary file + rename)."""
    write_text_atomic(path, frame.to_csv(index=False, lineterminator="\n"))
    return path


def write_part(
    results_dir: Path,
    direction: str,
    variant: str,
    dataset: str,
    per_class: pd.DataFrame,
    skipped: pd.DataFrame,
) -> Path:
    """Write one unit's per-class and skipped metrics, tagged with direction and variant."""
    out = ResultsLayout.at(results_dir).metrics_part_dir(direction, variant, dataset)
    tag = {"direction": direction, "variant": variant}
    write_csv(per_class.assign(**tag)[PER_CLASS_COLUMNS], out / PER_CLASS)
    write_csv(skipped.assign(**tag)[SKIPPED_COLUMNS], out / SKIPPED)
    return out


def dataset_means(per_class: pd.DataFrame) -> pd.DataFrame:
    """Unweighted mean over classes per (direction, variant, dataset, metric)."""
    keys = ["direction", "variant", "dataset", "metric"]
    if per_class.empty:
        return pd.DataFrame(columns=PER_DATASET_COLUMNS)
    grouped = per_class.groupby(keys, sort=True)["value"]
    out = grouped.agg(value="mean", n_classes="count").reset_index()
    return out[PER_DATASET_COLUMNS]


def _read_parts(layout: ResultsLayout, name: str, columns: list[str]) -> pd.DataFrame:
    files = layout.metrics_parts(name)
    frames = [pd.read_csv(f, dtype={"cls": str, "dataset": str}) for f in files]
    frames = [f for f in frames if not f.empty]
    return (
        pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    )


def merge_metrics(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gather every part into ``per_class.csv``, ``per_dataset.csv`` and ``skipped.csv``.

    Returns ``(per_class, per_dataset)``.
    """
    layout = ResultsLayout.at(results_dir)
    per_class = _read_parts(layout, PER_CLASS, PER_CLASS_COLUMNS)
    skipped = _read_parts(layout, SKIPPED, SKIPPED_COLUMNS)
    if per_class.empty:
        raise FileNotFoundError(
            f"No metric parts under {layout.metrics_parts_dir}; run the protocol first "
            f"(hxpe evaluate --params notebooks/params/<profile>.yaml)."
        )
    per_dataset = dataset_means(per_class)
    write_csv(per_class, layout.metrics_file(PER_CLASS))
    write_csv(per_dataset, layout.metrics_file(PER_DATASET))
    write_csv(skipped, layout.metrics_file(SKIPPED))
    logger.info(
        "merged %d per-class values (%d skipped) into %s",
        len(per_class),
        len(skipped),
        layout.metrics_dir,
    )
    return per_class, per_dataset


def load_metrics(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``per_class.csv`` and ``per_dataset.csv`` written by :func:`merge_metrics`."""
    layout = ResultsLayout.at(results_dir)
    paths = [layout.metrics_file(PER_CLASS), layout.metrics_file(PER_DATASET)]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} is missing; run the protocol (or `hxpe evaluate --merge`) first."
            )
    return (
        pd.read_csv(paths[0], dtype={"cls": str, "dataset": str}),
        pd.read_csv(paths[1], dtype={"dataset": str}),
    )
