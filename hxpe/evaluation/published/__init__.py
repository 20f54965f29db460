"""Published result tables kept as data files (``hxpe/evaluation/published/*.yaml``).

Each file cites its source (paper, arXiv id, table) and caveats, maps our dataset names to the
paper's rows, and lists values (×100, as printed) per method, dataset and metric.

Example:
    >>> t = load_published("adaclip_table1")
    >>> t.value("AdaCLIP", "mvtec", "image_auroc")
    89.2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

PUBLISHED_DIR = Path(__file__).parent
PUBLISHED_TABLES: tuple[str, ...] = ("adaclip_table1", "anomalyclip_table1")
REFERENCE_METHOD = {"adaclip_table1": "AdaCLIP", "anomalyclip_table1": "AnomalyCLIP"}


@dataclass
class PublishedTable:
    """One published table: long frame ``method, dataset, metric, value`` plus its provenance."""

    name: str
    source: dict[str, Any]
    caveats: list[str]
    metrics: list[str]
    rows: dict[str, str]
    frame: pd.DataFrame
    aupro_convention: str | None = None
    methods: list[str] = field(default_factory=list)

    def value(self, method: str, dataset: str, metric: str) -> float | None:
        """A published value (×100), or None when the table has no such cell."""
        hit = self.frame[
            (self.frame["method"] == method)
            & (self.frame["dataset"] == dataset)
            & (self.frame["metric"] == metric)
        ]
        return None if hit.empty or pd.isna(hit["value"].iloc[0]) else float(hit["value"].iloc[0])

    def citation(self) -> str:
        s = self.source
        return f"{s['paper']}, {s['table']} (arXiv {s['arxiv']})"


def load_published(name: str, directory: Path = PUBLISHED_DIR) -> PublishedTable:
    """Read ``<directory>/<name>.yaml`` and check it against its own metric and row lists."""
    path = directory / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in directory.glob("*.yaml"))
        raise FileNotFoundError(f"No published table {name!r} in {directory}; have {available}")
    raw = yaml.safe_load(path.read_text())
    records = []
    for method, per_dataset in raw["methods"].items():
        for dataset, values in per_dataset.items():
            if dataset not in raw["rows"]:
                raise ValueError(f"{path}: method {method} has unknown row {dataset!r}")
            for metric, value in values.items():
                if metric not in raw["metrics"]:
                    raise ValueError(f"{path}: {method}/{dataset} has unknown metric {metric!r}")
                records.append((method, dataset, metric, value))
    frame = pd.DataFrame(records, columns=["method", "dataset", "metric", "value"])
    frame["value"] = pd.to_numeric(frame["value"])
    return PublishedTable(
        name=raw["name"],
        source=raw["source"],
        caveats=list(raw.get("caveats", [])),
        metrics=list(raw["metrics"]),
        rows=dict(raw["rows"]),
        frame=frame,
        aupro_convention=raw.get("aupro_convention"),
        methods=list(raw["methods"]),
    )
