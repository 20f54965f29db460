"""``hxpe describe`` and ``hxpe extract``: stages 02 and 03 as their own processes.

Examples::

    hxpe describe --params notebooks/params/paper.yaml                      # one process
    CUDA_VISIBLE_DEVICES=1 hxpe describe --params ... --shard 1 --num-shards 4  # one of 4 shards
    hxpe describe --params notebooks/params/paper.yaml --merge              # fold shards in
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

AGENT_DIR = "agent"
DESCRIPTIONS = "descriptions.jsonl"
EXTRACTIONS = "extractions.jsonl"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="notebooks/params/demo.yaml", help="Profile params file.")
    p.add_argument("--shard", type=int, default=0, help="This process's shard index i (0-based).")
    p.add_argument("--num-shards", type=int, default=1, help="Number of shards N.")
    p.add_argument(
        "--merge",
        action="store_true",
        help="Merge <name>.shard-i-of-N.jsonl files into the main cache, then exit.",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``describe`` and ``extract`` subcommands to the ``hxpe`` command."""
    p = subparsers.add_parser(
        "describe", help="Stage 02: VLM descriptions of every image (cached, resumable, shardable)."
    )
    _add_common(p)
    p.set_defaults(func=cmd_describe)
    p = subparsers.add_parser(
        "extract",
        help="Stage 03: LLM extraction and anti-false-alarm verdicts (cached, shardable).",
    )
    _add_common(p)
    p.set_defaults(func=cmd_extract)


def agent_paths(results_dir: Path) -> tuple[Path, Path]:
    """``(descriptions.jsonl, extractions.jsonl)`` of a profile's results directory."""
    return results_dir / AGENT_DIR / DESCRIPTIONS, results_dir / AGENT_DIR / EXTRACTIONS


def _merge(path: Path) -> int:
    from hxpe.agent.cache import merge_shards

    added = merge_shards(path)
    print(f"merged shards into {path}: {added} new record(s)")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from hxpe.agent.describe import run_describe
    from hxpe.config import load_config
    from hxpe.data.index import load_index

    cfg = load_config(args.params)
    descriptions, _ = agent_paths(cfg.results_dir)
    if args.merge:
        return _merge(descriptions)
    indexes = [load_index(cfg.results_dir / "index" / d.name) for d in cfg.data.datasets]
    report = run_describe(
        indexes,
        cfg.agent,
        descriptions,
        reference_rule=cfg.data.reference_rule,
        shard=(args.shard, args.num_shards),
    )
    print(json.dumps(report.as_dict(), indent=1))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from hxpe.agent.extract import run_extract
    from hxpe.config import load_config

    cfg = load_config(args.params)
    descriptions, extractions = agent_paths(cfg.results_dir)
    if args.merge:
        return _merge(extractions)
    report = run_extract(descriptions, cfg.agent, extractions, shard=(args.shard, args.num_shards))
    print(json.dumps(report.as_dict(), indent=1))
    return 0
