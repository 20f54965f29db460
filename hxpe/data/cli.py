"""``hxpe prepare``: index one dataset from the command line.

Example:
    hxpe prepare mvtec --root /data/mvtec_anomaly_detection --out results/paper/index/mvtec
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

from hxpe.atomic import OutputRefused
from hxpe.data.config import DatasetSource
from hxpe.data.errors import DatasetError
from hxpe.data.prepare import prepare_dataset
from hxpe.data.registry import load_specs
from hxpe.data.summary import summary_table
from hxpe.results_layout import ResultsLayout

logger = logging.getLogger(__name__)

DEFAULT_OUT_PROFILE = "prepared"


def _fill(text: str, indent: str = "", subsequent: str = "") -> str:
    """Wrap help text without breaking URLs at their hyphens."""
    return textwrap.fill(
        text,
        width=96,
        initial_indent=indent,
        subsequent_indent=subsequent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def _datasets_help() -> str:
    """One paragraph per dataset kind: title, where to download it, notes."""
    parts = ["dataset kinds and where to get them:"]
    for kind, spec in load_specs().items():
        text = f"{kind}: {spec.title}. Download: {spec.download}"
        if spec.unpack:
            text += f" Unpack: {spec.unpack}"
        if spec.notes:
            text += f" {spec.notes}"
        parts.append(_fill(text, indent="  ", subsequent="    "))
    return "\n".join(parts)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``prepare`` command to an argparse sub-parser collection."""
    parser = subparsers.add_parser(
        "prepare",
        help="index a dataset (checks layout, counts, masks; writes index.csv, meta.json)",
        description=_fill(
            "Check a dataset on disk and write its index: index.csv (one row per image, with "
            "sha256), an AnomalyCLIP-compatible meta.json and dataset.json. Per-class counts are "
            "compared with the official release. KolektorSDD and DAGM are first restructured into an "
            "MVTec-style tree under <out>/prepared/, unless the root holds the authors' prepared "
            "files (AdaCLIP's SDD_anomaly_detection / DAGM_anomaly_detection trees, AnomalyCLIP's "
            "SDD or DAGM meta.json), which are detected and indexed as they are (no flags); "
            "dataset.json records which split was used."
        ),
        epilog=_datasets_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=list(load_specs()), help="dataset kind (layout)")
    parser.add_argument(
        "--root", required=True, type=Path, help="the unpacked dataset's top folder (see below)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"index directory to write (default: results/{DEFAULT_OUT_PROFILE}/index/<name>); "
        "replaced atomically only when every check passes; an existing folder must be empty or "
        "a previous index",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace --out even when it holds files that are not a dataset index",
    )
    parser.add_argument("--name", default=None, help="dataset name in the index (default: DATASET)")
    parser.add_argument(
        "--allow-count-mismatch",
        action="store_true",
        help="index a dataset whose per-class counts differ from the official release's",
    )
    parser.add_argument(
        "--normal-dir",
        default=None,
        help="name of the folder of normal images (folder kind: default detected among "
        "good/ok/normal/nominal; others: overrides the layout's, e.g. 'ok' for BTAD)",
    )
    parser.add_argument(
        "--classes", nargs="+", default=None, help="index only these classes (default: all)"
    )
    parser.add_argument(
        "--mask-suffix",
        default=None,
        help="mask file name suffix before the extension (default '_mask'; BTAD ''; DAGM "
        "'_label', '_mask' accepted too)",
    )
    parser.set_defaults(func=run_prepare)
    return parser


def source_from_args(args: argparse.Namespace) -> DatasetSource:
    """The :class:`DatasetSource` that the command line describes."""
    options = {
        key: value
        for key, value in (
            ("normal_dir", args.normal_dir),
            ("classes", args.classes),
            ("mask_suffix", args.mask_suffix),
        )
        if value is not None
    }
    name = args.name or args.dataset
    return DatasetSource(name=name, kind=args.dataset, root=str(args.root), options=options)


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``hxpe prepare``; print the count table, or the error and return 2."""
    source = source_from_args(args)
    out = args.out or ResultsLayout(DEFAULT_OUT_PROFILE).index_dir(source.name)
    try:
        index = prepare_dataset(
            source, out, allow_count_mismatch=args.allow_count_mismatch, force=args.force
        )
    except (DatasetError, OutputRefused) as err:
        print(f"hxpe prepare: error: {err}", file=sys.stderr)
        return 2
    print(summary_table({source.name: index}).to_string())
    print(f"index written to {out}")
    return 0
