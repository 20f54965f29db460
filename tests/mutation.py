"""Mutation testing (``make mutation``): mutmut mutates the model and training code one small change
at a time and runs the fast tests against each mutant; a mutant that no test kills is a formula the
tests do not pin.

The run happens in a scratch copy (``build/mutation-work``) so that the paths and tests are
configurable without editing pyproject.toml, and the worktree is never touched. The report,
``build/mutation.txt``, gives the kill rate per file and the diff of every surviving mutant;
``tests/MUTATION.md`` lists the survivors judged equivalent (no test can kill them), each with its
reason.

Examples::

    python tests/mutation.py                                    # the defaults below
    python tests/mutation.py --paths hxpe/model/dinov2_prompt.py --tests tests/model/test_dinov2_prompt.py
    python tests/mutation.py --max-children 2 --out build/mutation.txt
    python tests/mutation.py --mutants 'hxpe.*__mutmut_*0'      # a 1-in-10 sample (numbers ending in 0)

On a small machine a full run is hours (every surviving mutant reruns all the tests that reach its
function); ``--mutants`` with a glob on the mutant number gives a systematic sample whose kill rate
estimates the full one, and the report counts only the mutants the globs select. ``--keep-work``
reuses the scratch copy (its test statistics and results) when the sources have not changed.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from hxpe.equivalence import golden_dir

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATHS = [
    "hxpe/model/*.py",
    "hxpe/model/bases/*.py",
    "hxpe/train.py",
]
DEFAULT_TESTS = [
    "tests/model/test_model.py",
    "tests/model/test_clip_tower.py",
    "tests/model/test_explainable.py",
    "tests/model/test_dinov2_prompt.py",
    "tests/model/test_bases.py",
    "tests/model/test_loading.py",
    "tests/model/test_losses_hsf.py",
    "tests/model/test_inference_paths.py",
    "tests/test_train_loop.py",
    "tests/model/test_winclip.py",
    # loading (from a fake hub cache), the importers and checkpoints, against open_clip and the
    # authors' outputs (the golden comparisons need $HXPE_GOLDEN_DIR or ../shared/golden, else skip)
    "tests/model/test_openclip_equivalence.py",
    "tests/test_golden_equivalence.py",
    "tests/model/test_importers.py",
    "tests/backbones/test_demo_pretrained.py",
    "tests/model/test_clip_quickgelu_guard.py",
]
COPY = ["hxpe", "tests", "notebooks/params", "pyproject.toml"]
STATUS = re.compile(r"^\s*(?P<name>\S+): (?P<status>[\w ]+?)\s*$")


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def prepare(work: Path, paths: list[str], tests: list[str], timeout_multiplier: float) -> None:
    """A fresh scratch copy of the sources and tests with a ``[tool.mutmut]`` section."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for rel in COPY:
        src, dst = ROOT / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy2(src, dst)
    section = f"""

[tool.mutmut]
source_paths = ["hxpe"]
only_mutate = {_toml_list(paths)}
also_copy = ["notebooks/params"]
pytest_add_cli_args = ["-m", "not slow", "-q", "-x", "-p", "no:cacheprovider"]
# torch is not fork-safe once it has run: fork the workers from a server that only collected tests.
process_isolation = "forkserver"
forkserver_warmup = "collect"
pytest_add_cli_args_test_selection = {_toml_list(tests)}
timeout_multiplier = {timeout_multiplier}
"""
    with open(work / "pyproject.toml", "a") as fh:
        fh.write(section)


def statuses(work: Path) -> dict[str, str]:
    """``mutant name -> status`` from ``mutmut results --all true``."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        m = STATUS.match(line)
        if m and "__mutmut_" in m["name"] and m["status"] != "not checked":
            found[m["name"]] = m["status"]
    return found


def diff_of(work: Path, name: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def module_of(name: str) -> str:
    """``hxpe.model.dinov2_prompt.x_calibrate__mutmut_3`` -> ``hxpe.model.dinov2_prompt``."""
    parts = name.split(".")
    return ".".join(p for p in parts[:-1]) or name


def report(work: Path, found: dict[str, str], seconds: float, args: argparse.Namespace) -> str:
    by_module: dict[str, Counter] = {}
    for name, status in found.items():
        by_module.setdefault(module_of(name), Counter())[status] += 1
    lines = [
        "# Mutation testing report (tests/mutation.py)",
        f"paths: {' '.join(args.paths)}",
        f"tests: {' '.join(args.tests)} (-m 'not slow')",
        f"mutants: {' '.join(args.mutants) or 'all'}",
        f"run time: {seconds:.0f} s" if seconds else "run time: (report of an earlier run)",
        "",
        f"{'module':40s} {'mutants':>8s} {'killed':>7s} {'survived':>9s} {'other':>6s} {'kill %':>7s}",
    ]
    total = Counter()
    for module in sorted(by_module):
        c = by_module[module]
        total += c
        lines.append(_row(module, c))
    lines += [
        _row("TOTAL", total),
        "",
        "Statuses: " + ", ".join(f"{k} {v}" for k, v in total.items()),
    ]
    survivors = sorted(n for n, s in found.items() if s == "survived")
    lines += ["", f"## {len(survivors)} surviving mutants", ""]
    for name in survivors:
        lines += [f"### {name}", diff_of(work, name), ""]
    return "\n".join(lines) + "\n"


def _row(module: str, c: Counter) -> str:
    n = sum(c.values())
    killed = c["killed"] + c["timeout"]
    alive = c["survived"] + c["no tests"]
    other = n - killed - alive
    rate = 100.0 * killed / max(1, killed + alive)
    return f"{module:40s} {n:8d} {killed:7d} {alive:9d} {other:6d} {rate:6.1f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--paths",
        nargs="+",
        default=DEFAULT_PATHS,
        help=f"Globs of files to mutate (default: {DEFAULT_PATHS}).",
    )
    p.add_argument(
        "--tests",
        nargs="+",
        default=DEFAULT_TESTS,
        help=f"Test files to run (default: {DEFAULT_TESTS}).",
    )
    p.add_argument("--max-children", type=int, default=2, help="Parallel mutant runs.")
    p.add_argument(
        "--mutants",
        nargs="*",
        default=[],
        help="Only these mutant name globs, e.g. 'hxpe.model.dinov2_prompt.x_calibrate*' (default: all).",
    )
    p.add_argument(
        "--timeout-multiplier",
        type=float,
        default=30.0,
        help="A mutant times out after this many times its tests' clean duration (raise it on a "
        "loaded machine, so that slowness is not counted as a kill).",
    )
    p.add_argument(
        "--keep-work",
        action="store_true",
        help="Reuse the scratch copy of an earlier run with the same paths and tests (no re-copy).",
    )
    p.add_argument("--work", type=Path, default=ROOT / "build" / "mutation-work")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "mutation.txt")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="Write the report from the results already in --work (no new run).",
    )
    args = p.parse_args(argv)
    if args.report_only:
        return write_report(args, None, 0.0)
    if not (args.keep_work and (args.work / "pyproject.toml").is_file()):
        prepare(args.work, args.paths, args.tests, args.timeout_multiplier)
    started = time.perf_counter()
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    golden = golden_dir()  # found from this checkout: the scratch copy has no ../shared beside it
    if golden is not None:
        env["HXPE_GOLDEN_DIR"] = str(golden)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mutmut",
            "run",
            "--max-children",
            str(args.max_children),
            *args.mutants,
        ],
        cwd=args.work,
        env=env,
        check=False,
    )
    return write_report(args, run.returncode, time.perf_counter() - started)


def selected(found: dict[str, str], globs: list[str]) -> dict[str, str]:
    """The results of the mutants that ``globs`` select (all of them without globs).

    >>> selected({"m.x_f__mutmut_10": "killed", "m.x_f__mutmut_3": "survived"}, ["m.*__mutmut_*0"])
    {'m.x_f__mutmut_10': 'killed'}
    """
    if not globs:
        return found
    return {k: v for k, v in found.items() if any(fnmatch.fnmatch(k, g) for g in globs)}


def write_report(args: argparse.Namespace, returncode: int | None, seconds: float) -> int:
    found = selected(statuses(args.work), args.mutants)
    if not found:
        print(f"mutmut produced no results (exit {returncode}); see {args.work}")
        return returncode or 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(args.work, found, seconds, args))
    print(args.out.read_text().split("## ")[0])
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
