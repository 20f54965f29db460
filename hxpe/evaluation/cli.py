"""``hxpe evaluate``: the zero-shot protocol (stage 05) from the command line.

Examples:
    hxpe evaluate --params notebooks/params/demo.yaml
    hxpe evaluate --params notebooks/params/paper.yaml --dataset visa mpdd   # one shard per GPU
    hxpe evaluate --params notebooks/params/paper.yaml --merge               # gather shards, tables
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` command to an argparse sub-parser collection."""
    parser = subparsers.add_parser(
        "evaluate",
        help="run the zero-shot protocol: cached maps, per-class metrics, tables",
        description="For each direction, variant and target dataset: infer (maps cached under "
        "results/<profile>/maps/), compute per-class metrics, and (unless a --dataset shard is "
        "selected) merge them and write the tables. --merge alone only gathers shards and writes "
        "the tables.",
    )
    parser.add_argument(
        "--params", required=True, help="profile params file (notebooks/params/*.yaml)"
    )
    parser.add_argument(
        "--variant", dest="variants", action="extend", nargs="+", help="variants (default: all)"
    )
    parser.add_argument(
        "--direction",
        dest="directions",
        action="extend",
        nargs="+",
        help="directions (default: all)",
    )
    parser.add_argument(
        "--dataset",
        dest="datasets",
        action="extend",
        nargs="+",
        help="target datasets of this shard (default: all; then metrics are merged)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="merge metric parts of all shards and write tables"
    )
    parser.add_argument(
        "--recompute-maps", action="store_true", help="ignore cached maps and infer again"
    )
    parser.set_defaults(func=run_evaluate)
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the protocol (or only the merge) for the parsed arguments."""
    from hxpe.config import load_config
    from hxpe.evaluation.protocol import run_protocol
    from hxpe.evaluation.results import merge_metrics
    from hxpe.evaluation.tables import table_options, write_tables

    cfg = load_config(args.params)
    rd = cfg.results_dir
    shard = args.datasets is not None
    if not args.merge or args.variants or args.directions or shard:
        run_protocol(
            cfg,
            variants=args.variants,
            directions=args.directions,
            datasets=args.datasets,
            recompute_maps=args.recompute_maps,
            merge=False,
        )
    if args.merge or not shard:
        merge_metrics(rd)
        paths = write_tables(rd, **table_options(cfg))
        logger.info("tables: %s", ", ".join(p.name for p in paths))
    else:
        logger.info("shard %s done; run `hxpe evaluate --merge` after all shards", args.datasets)
    return 0
