"""Result tables of stage 05: per class, dataset summaries beside the published numbers, ablations.

All values are ×100 with one decimal, as the papers print them. Written to ``results/<profile>/tables/``
as CSV and markdown. Tables of the demo profile carry a banner saying that they come from small
backbones trained here on generated scenes, not the paper's models or numbers.

Example (the shrunk demo profile after stage 05):
    >>> paths = write_tables(cfg.results_dir, **table_options(cfg))
    >>> [p.name for p in paths if p.suffix == ".md"]
    ['per_class.md', ...]
    >>> print((cfg.layout.tables_dir / "ablation.md").read_text())
    # Variants (ablation rows), mean over each direction's datasets (demo)
    <BLANKLINE>
    > Demo profile: small backbones trained here on generated scenes; not the paper's models or numbers. ...
    >
    > Values ×100 (fractions in metrics/*.csv); dataset value = unweighted mean over classes.
    ...
    > Recipe hxpe: 1 epochs, lr 0.001, batch 4, adamw β=(0.5, 0.999) (profile overrides: ...
    >
    > Main variant: hxpe.
    >
    <BLANKLINE>
    | direction | variant | base | recipe | explain | dinov2 | reference | image_auroc | image_ap | ... |
    |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
    | aux_to_target | adaclip | adaclip | hxpe | off | off | first_normal_train | ... |
    | aux_to_target | hxpe | adaclip | hxpe | fuse | attn_bias | first_normal_train | ... |
    <BLANKLINE>
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hxpe.atomic import write_text_atomic
from hxpe.backbones import DEMO_BACKBONES_LABEL
from hxpe.evaluation.published import (
    PUBLISHED_TABLES,
    REFERENCE_METHOD,
    PublishedTable,
    load_published,
)
from hxpe.evaluation.results import load_metrics, write_csv
from hxpe.results_layout import ResultsLayout

if TYPE_CHECKING:
    from hxpe.config import Config

logger = logging.getLogger(__name__)

DEMO_PROFILE = "demo"
DEMO_NOTE = (
    f"Demo profile: {DEMO_BACKBONES_LABEL}. They show the method at work on a toy problem and say "
    "nothing about HXPE's accuracy on real data."
)
RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: CLIP (and DINOv2) were built without pretrained weights (a dry run of the "
    "pipeline). These numbers say nothing about HXPE's accuracy."
)
# Baseline variants (by base) and the published column they sit beside, with what the row is.
BASELINE_METHODS = {"winclip": "WinCLIP"}
BASELINE_NOTES = {
    "WinCLIP": (
        "Our WinCLIP row: zero-shot, multi-scale windows (2x2 and 3x3 patches, stride 1) re-encoded "
        "by CLIP, harmonic aggregation, WinCLIP's prompt ensemble; image score = the class token's "
        "(hxpe/model/winclip.py, pinned against anomalib's WinClipModel). Published WinCLIP cells "
        "on MVTec AD and VisA come from WinCLIP's paper (ViT-B/16+ at 240 px)."
    )
}
PRECISION_NOTES = {
    "float32": "Metrics computed from float32 maps (maps stored as float32).",
    "float16": (
        "Metrics computed from the float32 maps before they were stored as float16 (a float16 "
        "store would shift flat maps' AUPRO by up to 1 point)."
    ),
}
METRIC_ORDER = [
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_aupro",
]


def with_aupro_alias(frame: pd.DataFrame, aupro: str) -> pd.DataFrame:
    """Rename ``pixel_aupro_<aupro>`` (the reported convention) to ``pixel_aupro``; the other
    convention keeps its suffixed name."""
    return frame.replace({"metric": {f"pixel_aupro_{aupro}": "pixel_aupro"}})


def _ordered_metrics(metrics: pd.Series | list[str]) -> list[str]:
    present = list(dict.fromkeys(metrics))
    known = [m for m in METRIC_ORDER if m in present]
    return known + sorted(m for m in present if m not in known)


def per_class_table(per_class: pd.DataFrame, aupro: str = "anomalyclip") -> pd.DataFrame:
    """Wide per-class table: one row per (direction, variant, dataset, class), metrics ×100."""
    long = with_aupro_alias(per_class, aupro)
    wide = long.pivot_table(
        index=["direction", "variant", "dataset", "cls"], columns="metric", values="value"
    )
    wide = (100 * wide[_ordered_metrics(long["metric"])]).round(1)
    wide.columns.name = None
    return wide.reset_index()


def summary_table(
    per_dataset: pd.DataFrame,
    published: PublishedTable,
    variant: str,
    method: str | None = None,
    aupro: str = "anomalyclip",
) -> pd.DataFrame:
    """Our dataset means beside ``method``'s published values, with deltas (ours − published).

    One row per (direction, dataset) of ``variant``, plus ``average``: the mean over our datasets,
    beside the published mean over the same datasets (published ``average`` row when we cover all
    of the paper's datasets). Datasets the paper does not have get empty published cells.
    """
    method = method or REFERENCE_METHOD.get(published.name, published.methods[-1])
    ours = with_aupro_alias(per_dataset[per_dataset["variant"] == variant], aupro)
    if ours.empty:
        raise ValueError(
            f"no metrics for variant {variant!r}; have {sorted(per_dataset['variant'].unique())}"
        )
    ours = ours.pivot_table(index=["direction", "dataset"], columns="metric", values="value") * 100
    rows = []
    for (direction, dataset), values in ours.iterrows():
        row: dict[str, object] = {
            "direction": direction,
            "dataset": dataset,
            "paper_row": published.rows.get(dataset, ""),
        }
        for m in published.metrics:
            row[f"{m} (ours)"] = values.get(m, np.nan)
            row[f"{m} ({method})"] = published.value(method, dataset, m)
        rows.append(row)
    table = pd.DataFrame(rows)
    avg: dict[str, object] = {"direction": "", "dataset": "average", "paper_row": ""}
    covered = [d for d in published.rows if d != "average" and d in set(table["dataset"])]
    full = len(covered) == len([r for r in published.rows if r != "average"])
    for m in published.metrics:
        avg[f"{m} (ours)"] = table[f"{m} (ours)"].mean()
        pub_avg = published.value(method, "average", m) if full else None
        if pub_avg is None and covered:
            vals = [published.value(method, d, m) for d in covered]
            pub_avg = float(np.mean(vals)) if None not in vals else None
        avg[f"{m} ({method})"] = pub_avg
    avg["paper_row"] = (
        "Average" if full else f"mean of {len(covered)} matched rows" if covered else "no match"
    )
    table = pd.concat([table, pd.DataFrame([avg])], ignore_index=True)
    for m in published.metrics:
        ours_col, pub_col = f"{m} (ours)", f"{m} ({method})"
        table[pub_col] = pd.to_numeric(table[pub_col])
        table[f"{m} (Δ)"] = table[ours_col] - table[pub_col]
    order = ["direction", "dataset", "paper_row"] + [
        f"{m} ({k})" for m in published.metrics for k in ("ours", method, "Δ")
    ]
    return table[order].round(1)


def variant_columns(cfg: Config) -> dict[str, dict[str, str]]:
    """Per variant, what its ablation row switches: base, explainable prompts, DINOv2 prompts
    (``attn_bias`` / ``reweight`` / ``off``) and the normal reference (``none`` = §4 row 1)."""
    out = {}
    for variant in cfg.variants:
        m = cfg.model_for(variant)
        out[variant] = {
            "base": m.base,
            "recipe": m.recipe if m.trains else "none (zero-shot or imported)",
            "explain": m.explain.mode if m.explain.enabled else "off",
            "dinov2": m.vfm.mode if m.vfm.enabled else "off",
            "reference": cfg.reference_rule_for(variant),
        }
    return out


def recipe_notes(cfg: Config) -> list[str]:
    """One note per recipe the profile's trained rows use: its values and the rows that use it
    (testing too: the recipe's feature layers)."""
    from hxpe.model.config import recipe_label, training_recipe

    rows: dict[str, list[str]] = {}
    for variant in cfg.variants:
        m = cfg.model_for(variant)
        if m.trains:
            label = recipe_label(training_recipe(cfg.train, m))
            rows.setdefault(f"{label}, layers {m.clip.layers}", []).append(variant)
        elif m.checkpoint is not None:
            rows.setdefault(f"imported checkpoint, tested with layers {m.clip.layers}", []).append(
                variant
            )
    return [f"Recipe {label}: {', '.join(vs)}." for label, vs in rows.items()]


def ablation_table(
    per_dataset: pd.DataFrame,
    aupro: str = "anomalyclip",
    variants: dict[str, dict[str, str]] | None = None,
) -> pd.DataFrame:
    """One row per (direction, variant): each metric's mean over the direction's datasets, ×100;
    with ``variants`` (:func:`variant_columns`) also the settings each row switches."""
    long = with_aupro_alias(per_dataset, aupro)
    wide = long.pivot_table(index=["direction", "variant"], columns="metric", values="value")
    wide = (100 * wide[_ordered_metrics(long["metric"])]).round(1)
    wide.columns.name = None
    table = wide.reset_index()
    if variants:
        keys = list(dict.fromkeys(k for v in variants.values() for k in v))
        for pos, key in enumerate(keys, start=2):
            table.insert(pos, key, [variants.get(v, {}).get(key, "") for v in table["variant"]])
    return table


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table; missing values print as ``–``."""

    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "–"
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def split_notes(results_dir: Path, datasets: list[str]) -> list[str]:
    """Which split each dataset's index holds (``index/<name>/dataset.json``), then what that split
    is comparable with: one note line for the splits, one per comparability note."""
    parts, notes = [], []
    for name in datasets:
        info_path = ResultsLayout.at(results_dir).dataset_info(name)
        split = {}
        if info_path.is_file():
            split = json.loads(info_path.read_text()).get("split") or {}
        parts.append(
            f"{name}: {split.get('text', 'not recorded (index built before splits were recorded)')}"
        )
        if split.get("note") and split["note"] not in notes:
            notes.append(split["note"])
    return (["Splits: " + "; ".join(parts) + "."] if parts else []) + notes


def table_options(cfg: Config) -> dict[str, object]:
    """The :func:`write_tables` keywords a profile implies (main variant, baselines, precision,
    the ablation rows' labels)."""
    baselines = {
        v: BASELINE_METHODS[cfg.model_for(v).base]
        for v in cfg.variants
        if cfg.model_for(v).base in BASELINE_METHODS
    }
    return {
        "profile": cfg.profile,
        "main_variant": cfg.main_variant,
        "aupro": cfg.evaluation.aupro,
        "random_weights": cfg.uses_random_weights,
        "map_dtype": cfg.evaluation.map_dtype,
        "baselines": baselines,
        "variants": variant_columns(cfg),
        "recipes": recipe_notes(cfg),
    }


def _write(frame: pd.DataFrame, out: Path, stem: str, title: str, notes: list[str]) -> list[Path]:
    csv_path = write_csv(frame, out / f"{stem}.csv")
    text = f"# {title}\n\n" + "".join(f"> {n}\n>\n" for n in notes) + "\n" + to_markdown(frame)
    md_path = out / f"{stem}.md"
    write_text_atomic(md_path, text)
    return [csv_path, md_path]


def write_tables(
    results_dir: str | Path,
    *,
    profile: str,
    main_variant: str,
    aupro: str = "anomalyclip",
    published: tuple[str, ...] = PUBLISHED_TABLES,
    random_weights: bool = False,
    map_dtype: str = "float32",
    baselines: dict[str, str] | None = None,
    variants: dict[str, dict[str, str]] | None = None,
    recipes: list[str] | None = None,
) -> list[Path]:
    """Write per-class, summary (one per published table) and ablation tables to ``tables/``.

    ``baselines`` maps a baseline variant to its published column (``{"winclip": "WinCLIP"}``): each
    gets a summary beside that column in every published table that has it. ``variants``
    (:func:`variant_columns`) labels the ablation rows; ``recipes`` (:func:`recipe_notes`) names the
    training recipe of every row in every table. Every table says which split each dataset
    used and the maps' precision; the demo profile's tables, and any table from random-weight models
    (``random_weights``), carry a banner that says so.
    """
    rd = Path(results_dir)
    per_class, per_dataset = load_metrics(rd)
    out = ResultsLayout.at(rd).tables_dir
    banner = [DEMO_NOTE] if profile == DEMO_PROFILE else []
    if random_weights and profile != DEMO_PROFILE:
        banner.append(RANDOM_WEIGHTS_NOTE)
    scale = (
        "Values ×100 (fractions in metrics/*.csv); dataset value = unweighted mean over classes."
    )
    aupro_note = f"pixel_aupro = the '{aupro}' convention (pixel_aupro_{aupro})."
    if map_dtype not in PRECISION_NOTES:
        raise ValueError(f"map_dtype must be one of {sorted(PRECISION_NOTES)}; got {map_dtype!r}")
    common = [
        scale,
        aupro_note,
        PRECISION_NOTES[map_dtype],
        *split_notes(rd, sorted(per_dataset["dataset"].unique())),
        *(recipes or []),
    ]
    paths = _write(
        per_class_table(per_class, aupro),
        out,
        "per_class",
        f"Per-class results ({profile})",
        [*banner, *common],
    )
    present = set(per_dataset["variant"])
    for name in published:
        table = load_published(name)
        notes = [*banner, f"Published: {table.citation()}.", *table.caveats, *common]
        if table.aupro_convention and table.aupro_convention != aupro:
            notes.append(
                f"Published AUPRO uses the '{table.aupro_convention}' convention; ours is '{aupro}'."
            )
        summary = summary_table(per_dataset, table, main_variant, aupro=aupro)
        paths += _write(
            summary, out, f"summary_{name}", f"{main_variant} vs {table.name} ({profile})", notes
        )
        for variant, method in (baselines or {}).items():
            if method not in table.methods or variant not in present:
                continue
            row = summary_table(per_dataset, table, variant, method=method, aupro=aupro)
            paths += _write(
                row,
                out,
                f"summary_{name}_{variant}",
                f"{variant} vs {method} in {table.name} ({profile})",
                [*notes, BASELINE_NOTES.get(method, "")],
            )
    paths += _write(
        ablation_table(per_dataset, aupro, variants),
        out,
        "ablation",
        f"Variants (ablation rows), mean over each direction's datasets ({profile})",
        [*banner, *common, f"Main variant: {main_variant}."],
    )
    logger.info("wrote %d table files to %s", len(paths), out)
    return paths
