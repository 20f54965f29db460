"""``make verify``: do the artifacts in results/<profile>/ still match the run that made them?

Recomputes the SHA-256 of every artifact recorded in ``provenance.json``, checks that every table and
figure is recorded, and reports drift (changed, missing or unrecorded files; params changed since the
run). Exit status 1 on any mismatch, naming the files.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from hxpe.config import load_config
from hxpe.hashing import file_sha256
from hxpe.paths import resolve
from hxpe.provenance import read_manifest
from hxpe.results_layout import MANIFEST, ResultsLayout


@dataclass
class VerifyReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"verified {self.checked} artifacts: " + ("OK" if self.ok else "DRIFT")
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


def verify_results(results_dir: Path, params_file: Path | None = None) -> VerifyReport:
    """Compare ``results_dir`` with its manifest (see module docstring)."""
    report = VerifyReport()
    layout = ResultsLayout.at(results_dir)
    manifest = read_manifest(results_dir)
    if not manifest:
        report.problems.append(
            f"{layout.manifest} is missing: this results folder has no provenance. "
            f"Rerun the pipeline (make all PROFILE=...)."
        )
        return report
    recorded: dict[str, str] = {}
    for stage, entry in manifest.get("stages", {}).items():
        for rel, digest in entry.get("artifacts", {}).items():
            recorded[rel] = digest
            path = results_dir / rel
            report.checked += 1
            if not path.is_file():
                report.problems.append(f"missing: {rel} (written by stage {stage})")
            elif file_sha256(path) != digest:
                report.problems.append(f"changed since stage {stage} wrote it: {rel}")
    for base in layout.traceable_dirs:
        if base.is_dir():
            for f in sorted(p for p in base.rglob("*") if p.is_file()):
                rel = f.relative_to(results_dir).as_posix()
                if rel not in recorded:
                    report.problems.append(f"no provenance: {rel} is not in {MANIFEST}")
    recorded_params = manifest.get("params_sha256")
    if params_file is not None and recorded_params and file_sha256(params_file) != recorded_params:
        report.problems.append(
            f"params changed since the run: {params_file} no longer matches the manifest; "
            f"rerun the stages (make all) or restore the file."
        )
    return report


def _cmd_verify(args: argparse.Namespace) -> int:
    params = resolve(args.params)
    cfg = load_config(params)
    report = verify_results(cfg.results_dir, params)
    print(report)
    return 0 if report.ok else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="Recompute artifact hashes against results/<profile>/provenance.json; "
        "exit 1 on drift.",
    )
    p.add_argument("--params", default="notebooks/params/demo.yaml", help="Profile params file.")
    p.set_defaults(func=_cmd_verify)


def compare_runs(a: Path, b: Path, *, atol: float = 1e-6) -> list[str]:
    """Differences between two results folders of the same profile (empty when they agree).

    Compares ``metrics/per_class.csv`` value by value (``atol``) and the agent caches record by record
    with their timing/host fields dropped. ``atol`` is 1e-6 on CPU; use ~1e-4 for GPU reruns with
    ``deterministic: true`` (some CUDA kernels have no deterministic variant).
    """
    import pandas as pd

    from hxpe.agent.cache import read_records, stable_view

    problems: list[str] = []
    runs = ResultsLayout.at(a), ResultsLayout.at(b)
    pa, pb = (run.metrics_file("per_class.csv") for run in runs)
    if pa.is_file() and pb.is_file():
        keys = ["direction", "variant", "dataset", "cls", "metric"]
        fa, fb = pd.read_csv(pa), pd.read_csv(pb)
        merged = fa.merge(fb, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
        for row in merged[merged["_merge"] != "both"].itertuples():
            problems.append(
                f"metric only in one run: {row.variant}/{row.dataset}/{row.cls}/{row.metric}"
            )
        both = merged[merged["_merge"] == "both"]
        diff = (both["value_a"] - both["value_b"]).abs()
        for row in both[diff > atol].itertuples():
            problems.append(
                f"metric differs: {row.variant}/{row.dataset}/{row.cls}/{row.metric} "
                f"{row.value_a!r} vs {row.value_b!r}"
            )
    elif pa.is_file() != pb.is_file():
        problems.append(f"{runs[0].relative(pa)} exists in only one run")
    for fa, fb in zip(*(run.agent_caches() for run in runs), strict=True):
        rel = runs[0].relative(fa)
        if not (fa.is_file() or fb.is_file()):
            continue
        if fa.is_file() != fb.is_file():
            problems.append(f"{rel} exists in only one run")
            continue
        ra = [stable_view(r) for r in read_records(fa)]
        rb = [stable_view(r) for r in read_records(fb)]
        if ra != rb:
            problems.append(f"{rel} differs ({len(ra)} vs {len(rb)} records)")
    return problems
