"""``make verify``: do the artifacts in results/<profile>/ still match the run that made them?

Recomputes the SHA-256 of every artifact recorded in ``provenance.json``, checks that every table and
figure is recorded, and reports drift (changed, missing or unrecorded files; params changed since the
run). Exit status 1 on any mismatch, naming the files.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from hxpe.config import file_sha256, load_config
from hxpe.paths import resolve
from hxpe.provenance import MANIFEST, read_manifest

TRACEABLE_DIRS = ("tables", "figures", "metrics")


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
    manifest = read_manifest(results_dir)
    if not manifest:
        report.problems.append(
            f"{results_dir / MANIFEST} is missing: this results folder has no provenance. "
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
    for sub in TRACEABLE_DIRS:
        base = results_dir / sub
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
