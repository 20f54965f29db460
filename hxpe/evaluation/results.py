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

logger = logging.getLogger(__name__)

PER_CLASS_COLUMNS = ["direction", "variant", "dataset", "cls", "metric", "value"]
PER_DATASET_COLUMNS = ["direction", "variant", "dataset", "metric", "value", "n_classes"]
SKIPPED_COLUMNS = ["direction", "variant", "dataset", "cls", "metric", "reason"]


def metrics_dir(results_dir: Path) -> Path:
    return Path(results_dir) / "metrics"


def part_dir(results_dir: Path, direction: str, variant: str, dataset: str) -> Path:
    return metrics_dir(results_dir) / "parts" / direction / variant / dataset


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
    out = part_dir(results_dir, direction, variant, dataset)
    tag = {"direction": direction, "variant": variant}
    write_csv(per_class.assign(**tag)[PER_CLASS_COLUMNS], out / "per_class.csv")
    write_csv(skipped.assign(**tag)[SKIPPED_COLUMNS], out / "skipped.csv")
    return out


def dataset_means(per_class: pd.DataFrame) -> pd.DataFrame:
    """Unweighted mean over classes per (direction, variant, dataset, metric)."""
    keys = ["direction", "variant", "dataset", "metric"]
    if per_class.empty:
        return pd.DataFrame(columns=PER_DATASET_COLUMNS)
    grouped = per_class.groupby(keys, sort=True)["value"]
    out = grouped.agg(value="mean", n_classes="count").reset_index()
    return out[PER_DATASET_COLUMNS]


def _read_parts(results_dir: Path, name: str, columns: list[str]) -> pd.DataFrame:
    files = sorted((metrics_dir(results_dir) / "parts").glob(f"*/*/*/{name}"))
    frames = [pd.read_csv(f, dtype={"cls": str, "dataset": str}) for f in files]
    frames = [f for f in frames if not f.empty]
    return (
        pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    )


def merge_metrics(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gather every part into ``per_class.csv``, ``per_dataset.csv`` and ``skipped.csv``.

    Returns ``(per_class, per_dataset)``.
    """
    per_class = _read_parts(results_dir, "per_class.csv", PER_CLASS_COLUMNS)
    skipped = _read_parts(results_dir, "skipped.csv", SKIPPED_COLUMNS)
    if per_class.empty:
        raise FileNotFoundError(
            f"No metric parts under {metrics_dir(results_dir) / 'parts'}; run the protocol first "
            f"(hxpe evaluate --params notebooks/params/<profile>.yaml)."
        )
    per_dataset = dataset_means(per_class)
    out = metrics_dir(results_dir)
    write_csv(per_class, out / "per_class.csv")
    write_csv(per_dataset, out / "per_dataset.csv")
    write_csv(skipped, out / "skipped.csv")
    logger.info(
        "merged %d per-class values (%d skipped) into %s", len(per_class), len(skipped), out
    )
    return per_class, per_dataset


def load_metrics(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``per_class.csv`` and ``per_dataset.csv`` written by :func:`merge_metrics`."""
    out = metrics_dir(results_dir)
    paths = [out / "per_class.csv", out / "per_dataset.csv"]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} is missing; run the protocol (or `hxpe evaluate --merge`) first."
            )
    return (
        pd.read_csv(paths[0], dtype={"cls": str, "dataset": str}),
        pd.read_csv(paths[1], dtype={"dataset": str}),
    )
