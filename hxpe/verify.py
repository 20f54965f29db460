"""``make verify``: do the artifacts in results/<profile>/ still match the run that made them?

Recomputes the SHA-256 of every artifact recorded in ``provenance.json`` (the agent caches of every
reference rule, checkpoints, maps, metrics, tables, figures, notebooks), reports every file under the
profile's folder that no stage recorded (a file added to a checkpoint, a fake variant), refuses manifest
paths that leave the results folder, and reports drift (changed, missing or unrecorded files; params
changed since the run). Hidden files and folders (``.name``: a stage's staging leftovers, which no
stage reads) are not artifacts. Exit status 1 on any mismatch, naming the files.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from hxpe.config import load_config
from hxpe.hashing import file_sha256
from hxpe.paths import resolve
from hxpe.results_layout import MANIFEST, RULE_SUFFIX, ResultsLayout


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


class ManifestError(ValueError):
    """``provenance.json`` is not the manifest that :func:`hxpe.provenance.record_stage` writes."""


def load_manifest(path: Path) -> dict[str, dict[str, str]]:
    """The recorded artifacts of ``path``, ``{stage: {relative path: sha256}}``; a
    :class:`ManifestError` naming the file and the fault when it is malformed."""

    def fault(what: str) -> ManifestError:
        return ManifestError(
            f"{path} is malformed ({what}); it is written by the stages, so restore it or rerun "
            f"the pipeline (make all PROFILE=...)."
        )

    try:
        manifest: Any = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise fault(f"not JSON: {err}") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stages", {}), dict):
        raise fault("expected an object with a 'stages' object")
    stages: dict[str, dict[str, str]] = {}
    for stage, entry in manifest.get("stages", {}).items():
        artifacts = entry.get("artifacts", {}) if isinstance(entry, dict) else None
        if not isinstance(artifacts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in artifacts.items()
        ):
            raise fault(f"stage {stage!r}: 'artifacts' must map paths to SHA-256 strings")
        stages[stage] = artifacts
    return stages


def inside(results_dir: Path, rel: str) -> Path | None:
    """``results_dir / rel`` when ``rel`` is a relative path that stays inside ``results_dir``
    (no ``..``, not absolute, no link out of it), else None.

    >>> inside(tmp_path, "tables/a.md") == tmp_path / "tables" / "a.md"
    True
    >>> inside(tmp_path, "../other/provenance.json"), inside(tmp_path, "/etc/passwd")
    (None, None)
    """
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or "\\" in rel or ".." in parts:
        return None
    path = results_dir.joinpath(*parts)
    if not path.resolve().is_relative_to(results_dir.resolve()):
        return None
    return path


def unrecorded_files(results_dir: Path, recorded: set[str]) -> list[str]:
    """Files under ``results_dir`` (links included) that no stage recorded, but the manifest and
    hidden files and folders."""
    found = []
    for path in sorted(results_dir.rglob("*")):
        rel = path.relative_to(results_dir).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if rel == MANIFEST or any(part.startswith(".") for part in rel.split("/")):
            continue
        if rel not in recorded:
            found.append(rel)
    return found


def verify_results(results_dir: Path, params_file: Path | None = None) -> VerifyReport:
    """Compare ``results_dir`` with its manifest (see module docstring)."""
    report = VerifyReport()
    layout = ResultsLayout.at(results_dir)
    if not layout.manifest.is_file():
        report.problems.append(
            f"{layout.manifest} is missing: this results folder has no provenance. "
            f"Rerun the pipeline (make all PROFILE=...)."
        )
        return report
    try:
        stages = load_manifest(layout.manifest)
    except ManifestError as err:
        report.problems.append(str(err))
        return report
    recorded: dict[str, str] = {}
    for stage, artifacts in stages.items():
        for rel, digest in artifacts.items():
            recorded[rel] = digest
            path = inside(results_dir, rel)
            report.checked += 1
            if path is None:
                report.problems.append(
                    f"outside the results folder: {rel} (recorded by stage {stage}); "
                    f"{MANIFEST} may only name files under {results_dir}"
                )
            elif not path.is_file():
                report.problems.append(f"missing: {rel} (written by stage {stage})")
            elif file_sha256(path) != digest:
                report.problems.append(f"changed since stage {stage} wrote it: {rel}")
    for rel in unrecorded_files(results_dir, set(recorded)):
        report.problems.append(f"no provenance: {rel} is not in {MANIFEST}")
    recorded_params = json.loads(layout.manifest.read_text()).get("params_sha256")
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
    caches = [[f for rule in RULE_SUFFIX for f in run.agent_caches(rule)] for run in runs]
    for fa, fb in zip(*caches, strict=True):
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
