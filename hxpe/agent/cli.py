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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hxpe.agent.backend_base import LazyEngine
    from hxpe.agent.cache import Shard
    from hxpe.agent.runner import StageReport
    from hxpe.config import Config

log = logging.getLogger(__name__)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="notebooks/params/demo.yaml", help="Profile params file.")
    p.add_argument("--shard", type=int, default=0, help="This process's shard index i (0-based).")
    p.add_argument("--num-shards", type=int, default=1, help="Number of shards N.")
    p.add_argument(
        "--merge",
        action="store_true",
        help="Merge <name>.shard-i-of-N.jsonl files into the main cache, then exit.",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _merge(path: Path) -> int:
    from hxpe.agent.cache import merge_shards

    added = merge_shards(path)
    print(f"merged shards into {path}: {added} new record(s)")
    return 0


def _each_rule(
    args: argparse.Namespace,
    stage: int,
    run: Callable[[Config, str, Shard, LazyEngine], StageReport],
) -> int:
    """One stage (``stage`` 0: describe, 1: extract) for every reference rule of the profile:
    ``run(cfg, rule, shard, engine)`` and print its report, or only merge the shards with ``--merge``.
    ``engine`` is built on first use and shared by the rules: one engine per process (a second 72B
    engine may not start while the first still holds the GPU's memory)."""
    from hxpe.agent.backend_base import LazyEngine, make_describer, make_extractor
    from hxpe.agent.runner import EngineFailure
    from hxpe.config import load_config

    cfg = load_config(args.params)
    rules = cfg.reference_rules()
    if args.merge:
        return max(_merge(cfg.layout.agent_caches(rule)[stage]) for rule in rules)
    if stage == 0:
        engine = LazyEngine(lambda: make_describer(cfg.agent.describe))
    else:
        engine = LazyEngine(lambda: make_extractor(cfg.agent.extract))
    for rule in rules:
        try:
            report = run(cfg, rule, (args.shard, args.num_shards), engine)
        except EngineFailure as err:  # the message says what was kept and what to do
            print(f"hxpe {('describe', 'extract')[stage]} ({rule}): {err}", file=sys.stderr)
            return 1
        print(json.dumps({"reference_rule": rule, **report.as_dict()}, indent=1))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from hxpe.agent.describe import run_describe
    from hxpe.data.index import load_index

    def run(cfg: Config, rule: str, shard: Shard, engine: LazyEngine) -> StageReport:
        indexes = [load_index(cfg.layout.index_dir(d.name)) for d in cfg.data.datasets]
        return run_describe(
            indexes,
            cfg.agent,
            cfg.layout.descriptions(rule),
            reference_rule=rule,
            shard=shard,
            describer=engine,
        )

    return _each_rule(args, 0, run)


def cmd_extract(args: argparse.Namespace) -> int:
    from hxpe.agent.extract import run_extract

    def run(cfg: Config, rule: str, shard: Shard, engine: LazyEngine) -> StageReport:
        descriptions, extractions = cfg.layout.agent_caches(rule)
        return run_extract(
            descriptions, cfg.agent, extractions, shard=shard, clip=cfg.model.clip, extractor=engine
        )

    return _each_rule(args, 1, run)
