"""The ``hxpe`` command: one entry point for every stage and tool.

Subcommands come from the module that owns each job (``register(subparsers)`` in
``hxpe.data.cli``, ``hxpe.agent.cli``, ``hxpe.evaluation.cli``, ...); this file only wires them and
adds the pipeline tools (``stage``, ``doctor``, ``fetch-models``, ``verify``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from hxpe.pipeline import STAGES, configure_logging

SUBCOMMAND_MODULES = (
    "hxpe.data.cli",
    "hxpe.agent.cli",
    "hxpe.evaluation.cli",
    "hxpe.predict",
    "hxpe.app",
    "hxpe.verify",
    "hxpe.equivalence",
    "hxpe.model.importers",
)

log = logging.getLogger(__name__)


def _cmd_stage(args: argparse.Namespace) -> int:
    from hxpe.pipeline import run_stage

    run_stage(args.name, args.params, kernel=args.kernel)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from hxpe.config import load_config
    from hxpe.doctor import report, run_checks

    text, ready = report(run_checks(load_config(args.params)))
    print(text)
    return 0 if ready else 1


def _cmd_fetch(args: argparse.Namespace) -> int:

    from hxpe.config import load_config
    from hxpe.doctor import required_weight_keys
    from hxpe.results_layout import models_lock
    from hxpe.weights import describe_plan, fetch, fetch_plan

    keys = args.models or required_weight_keys(load_config(args.params))
    if not keys:
        print(
            f"{args.params} loads no pinned weights (random-init or classical models): nothing to fetch."
        )
        return 0
    print(f"Weights to fetch ({'MODELS' if args.models else args.params}):")
    print(describe_plan(fetch_plan(keys)))
    if args.dry_run:
        return 0
    lock = models_lock()
    result = fetch(keys, lock=lock)
    print(f"Fetched {sorted(result.resolved)}; resolved revisions in {lock}")
    for warning in result.skipped:
        print(f"WARNING: {warning}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hxpe",
        description="HXPE compendium: zero-shot industrial anomaly detection with hybrid "
        "explainable prompts (Cai et al., IJCAI 2025). Most users run `make demo` / `make reproduce`; "
        "these subcommands run single stages, shards, and tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stage", help="Execute one stage's notebook with papermill (atomic).")
    p.add_argument("name", choices=list(STAGES), help="Stage to run.")
    p.add_argument("--params", default="notebooks/params/demo.yaml", help="Profile params file.")
    p.add_argument(
        "--kernel", default="hxpe", help="Jupyter kernel (default: hxpe, the .venv one)."
    )
    p.set_defaults(func=_cmd_stage)

    p = sub.add_parser(
        "doctor",
        help="Check GPU, vLLM, Triton's build tools (C compiler, Python.h), cached weights and "
        "dataset roots for a profile.",
    )
    p.add_argument("--params", default="notebooks/params/paper.yaml", help="Profile params file.")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser(
        "fetch-models", help="Download the pinned weights (hxpe/weights.yaml); needs internet."
    )
    p.add_argument(
        "models",
        nargs="*",
        help="Keys to fetch (clip, clip-b16, dinov2, vlm_awq, vlm, llm, ...); default: those the "
        "profile loads.",
    )
    p.add_argument(
        "--params",
        default="notebooks/params/paper.yaml",
        help="Profile whose weights to fetch when no keys are given (default: the paper's: clip, "
        "dinov2, vlm_awq, llm; not the 147 GB bf16 vlm).",
    )
    p.add_argument("--dry-run", action="store_true", help="Print the plan, download nothing.")
    p.set_defaults(func=_cmd_fetch)

    for name in SUBCOMMAND_MODULES:
        try:
            importlib.import_module(name).register(sub)
        except ImportError as err:  # one broken module must not take the other commands down
            log.warning("subcommands of %s are unavailable: %s", name, err)
    return parser


ONLINE_COMMANDS = ("fetch-models",)


def stay_offline(argv: list[str]) -> None:
    """Set ``HF_HUB_OFFLINE=1`` (unless already set) for every command but ``fetch-models``, before
    anything imports the Hugging Face libraries: a checkpoint or params file can then never make
    the program contact the model hub."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in ONLINE_COMMANDS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    from hxpe.errors import user_message

    configure_logging()
    argv = sys.argv[1:] if argv is None else argv
    stay_offline(argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OSError, KeyError, ValueError, MemoryError, RuntimeError) as err:
        message = user_message(err, f"hxpe {args.command}")
        if message is None:
            raise
        log.error("%s", message)
        return 2


if __name__ == "__main__":
    sys.exit(main())
