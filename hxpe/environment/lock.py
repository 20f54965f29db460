"""``make lock``: resolve the two version locks with uv, so that both environments install without
backtracking and agree wherever they share a package.

* ``constraints-gpu.txt`` (``.venv-vllm``, ``make gpu-env``): every extra (``gpu`` included) but the
  declared CPU-only ones (``[tool.hxpe.lock] cpu-only-extras`` in pyproject.toml: ``app``), for Linux
  x86_64 (glibc >= 2.31, the oldest that every vLLM dependency has wheels for), Python 3.11, with the
  CUDA wheels vLLM pins (torch, its nvidia-* libraries). Resolving the other extras (notebooks, test,
  and any new one) here too means that such a dependency cannot pull a shared package to a version
  vLLM's side rejects: the resolution fails here, loudly, instead.
* ``constraints.txt`` (``.venv``, ``make venv``, CI): every extra but ``gpu``, for Linux x86_64 with
  Python 3.11, **constrained to the GPU lock's versions** for every package but (a) the torch family and
  (b) the declared divergences (``[tool.hxpe.lock.may-diverge]``: package -> why a CPU-only extra needs
  a version vLLM's side rejects), so a shared package (transformers, numpy, lark, ...) has one version
  in both, and that version satisfies vLLM's and its dependencies' pins.

The inputs are the lines above ``RESOLVED_MARKER`` in ``constraints.txt``: GPU-only top-level pins
(``vllm``, ``qwen-vl-utils``), CPU-only ones (``torch``, ``torchvision``), and any range a resolution
should respect (``sphinx>=7``); plus pyproject.toml's extras and ``[tool.hxpe.lock]``. A new extra needs
no edit here: it is resolved jointly with vLLM unless pyproject declares it CPU-only. Existing pins are
kept where they still fit (uv prefers the versions already in the output file); ``--upgrade`` lifts
them. ``--check`` re-resolves both locks pinned to themselves, checks that the divergences are
exactly the declared ones, each still needed, and has uv resolve vLLM's pin (the GPU-only inputs) with
constraints.txt's shared versions, so that they satisfy vLLM's published requirements.
Only metadata is downloaded (``--no-build``: no source builds); a warm uv cache makes it take seconds.

Example:
    python -m hxpe.environment.lock            # rewrite both files
    python -m hxpe.environment.lock --check    # resolve against the locks; fail if anything moves
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from hxpe.paths import repo_root

RESOLVED_MARKER = "# Resolved by make lock"
PYTHON_VERSION = "3.11"
GPU_PLATFORM = "x86_64-manylinux_2_31"
CPU_PLATFORM = "x86_64-manylinux_2_28"
# Packages whose builds differ between the CPU venv (torch 2.14.1) and vLLM's (torch 2.14.0): each
# lock resolves them on its own; everything else is shared.
TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def normalize(name: str) -> str:
    """PEP 503 name normalisation: ``Jinja2`` -> ``jinja2``, ``typing_extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements/constraints text, by normalised name."""
    pins = {}
    for line in text.splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins[normalize(m.group(1))] = m.group(2)
    return pins


class LockFiles:
    """The two locks of a checkout (``root``) and the project file they are resolved for."""

    def __init__(self, root: Path):
        self.root = root
        self.cpu = root / "constraints.txt"
        self.gpu = root / "constraints-gpu.txt"
        self.pyproject = root / "pyproject.toml"

    def header(self) -> str:
        """The hand-written part of constraints.txt (inputs of the resolution), marker line included."""
        text = self.cpu.read_text()
        at = text.find("\n" + RESOLVED_MARKER)
        if at < 0:
            raise ValueError(
                f"{self.cpu} has no line starting with {RESOLVED_MARKER!r}; the lines above it are "
                f"make lock's inputs. Restore the header from git."
            )
        return text[: text.index("\n", at + 1) + 1]

    def input_pins(self) -> dict[str, str]:
        """The header's exact pins (``name==version``)."""
        return read_pins(self.header())

    def input_requirements(self) -> list[str]:
        """Every requirement line of the header: exact pins and ranges (``gradio>=5``) alike."""
        lines = (line.split("#", 1)[0].strip() for line in self.header().splitlines())
        return [line for line in lines if line]

    def all_extras(self) -> list[str]:
        """Every optional-dependency group of pyproject.toml (the GPU lock's resolution)."""
        return list(tomllib.loads(self.pyproject.read_text())["project"]["optional-dependencies"])

    def cpu_extras(self) -> list[str]:
        """Every optional-dependency group but the GPU one (the CPU lock's resolution)."""
        return [e for e in self.all_extras() if e != "gpu"]

    def lock_settings(self) -> dict[str, Any]:
        """``[tool.hxpe.lock]`` of pyproject.toml (empty when absent)."""
        settings: dict[str, Any] = (
            tomllib.loads(self.pyproject.read_text())
            .get("tool", {})
            .get("hxpe", {})
            .get("lock", {})
        )
        return settings

    def cpu_only_extras(self) -> list[str]:
        """The declared extras that stay out of the vLLM environment (``cpu-only-extras``)."""
        declared = list(self.lock_settings().get("cpu-only-extras", []))
        unknown = [e for e in declared if e not in self.all_extras() or e == "gpu"]
        if unknown:
            raise ValueError(
                f"{self.pyproject}: [tool.hxpe.lock] cpu-only-extras names {unknown}, which are not "
                f"CPU extras of [project.optional-dependencies] ({self.cpu_extras()}). Fix the list."
            )
        return declared

    def gpu_extras(self) -> list[str]:
        """Every optional-dependency group but the CPU-only ones (the GPU lock's resolution)."""
        cpu_only = self.cpu_only_extras()
        return [e for e in self.all_extras() if e not in cpu_only]

    def may_diverge(self) -> dict[str, str]:
        """The declared divergences: normalised package name -> the reason (``may-diverge``)."""
        declared = self.lock_settings().get("may-diverge", {})
        return {normalize(n): str(reason) for n, reason in declared.items()}


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return normalize(Requirement(requirement).name)


def gpu_input_pins(files: LockFiles) -> dict[str, str]:
    """The header's exact pins that belong to the GPU resolution (all but the CPU torch family)."""
    return {n: v for n, v in files.input_pins().items() if not TORCH_FAMILY.match(n)}


def gpu_inputs(files: LockFiles) -> list[str]:
    """The GPU (joint) resolution's constraints: every header line but the CPU torch family's."""
    return [r for r in files.input_requirements() if not TORCH_FAMILY.match(_name(r))]


def cpu_inputs(
    files: LockFiles, gpu_lock: dict[str, str], may_diverge: set[str] | None = None
) -> list[str]:
    """The CPU resolution's constraints: the GPU lock's versions of every package but the torch family
    and ``may_diverge`` (default: the declared divergences), plus the header's torch lines.

    >>> cpu_inputs(LockFiles(repo_root()), {"numpy": "2.3.5", "torch": "2.14.0", "x": "1"}, {"x"})
    ['numpy==2.3.5', 'torch==2.14.1', 'torchvision==0.29.1']
    """
    free = set(files.may_diverge()) if may_diverge is None else may_diverge
    shared = [
        f"{n}=={v}"
        for n, v in sorted(gpu_lock.items())
        if not TORCH_FAMILY.match(n) and n not in free
    ]
    return shared + [r for r in files.input_requirements() if TORCH_FAMILY.match(_name(r))]


def uv_command() -> list[str]:
    """uv from this interpreter's environment (pinned in constraints.txt, installed by make venv)."""
    return [sys.executable, "-m", "uv"]


INPUTS_HINT = (
    "Change the inputs at the top of constraints.txt (or pyproject ranges) and rerun `make lock`."
)


def compile_lock(
    source: Path,
    extras: list[str] | tuple[str, ...],
    constraints: list[str],
    platform: str,
    output: Path,
    *,
    preferences: dict[str, str] | None = None,
    upgrade: bool = False,
    hint: str = INPUTS_HINT,
    what: str | None = None,
) -> dict[str, str]:
    """Resolve ``source`` (pyproject.toml with ``extras``, or a requirements file) with
    ``uv pip compile`` into ``output``; return its pins.

    ``preferences`` are written to ``output`` first: uv keeps those versions where they still fit.
    Raises ``RuntimeError`` naming ``what`` (default: the extras) with uv's explanation when there is
    no solution.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cfile = Path(tmp) / "constraints.in"
        cfile.write_text("".join(f"{line}\n" for line in constraints))
        output.write_text("".join(f"{n}=={v}\n" for n, v in sorted((preferences or {}).items())))
        cmd = [
            *uv_command(),
            "pip",
            "compile",
            str(source),
            *[a for e in extras for a in ("--extra", e)],
            "--constraint",
            str(cfile),
            "--python-version",
            PYTHON_VERSION,
            "--python-platform",
            platform,
            "--no-build",
            "--no-header",
            "--no-annotate",
            "--no-emit-package",
            "hxpe",
            "--quiet",
            "--output-file",
            str(output),
            *(["--upgrade"] if upgrade else []),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_uv_env())
    if done.returncode != 0:
        raise RuntimeError(
            f"uv could not resolve {what or ', '.join(extras)} for {platform}, Python {PYTHON_VERSION}:\n"
            f"{done.stderr.strip()}\n{hint}"
        )
    return read_pins(output.read_text())


def _uv_env() -> dict[str, str]:
    """The environment for uv: system certificates (as pip here), no project config surprises."""
    return {**os.environ, "UV_SYSTEM_CERTS": "1", "UV_NO_CONFIG": "1"}


GPU_HEADER = """\
# The vLLM environment's lock (.venv-vllm, `make gpu-env`): every extra of pyproject.toml but the
# CPU-only ones ([tool.hxpe.lock] cpu-only-extras), Linux x86_64 (glibc >= 2.31), Python 3.11, CUDA
# wheels. Generated by `make lock` with constraints.txt (hxpe/environment/lock.py); do not edit. vLLM
# pins its own torch; every package it shares with constraints.txt has the same version there, except
# the declared divergences ([tool.hxpe.lock.may-diverge], each with its reason).
"""

CPU_HINT = (
    "constraints.txt is resolved with every package pinned to constraints-gpu.txt's version (the torch "
    "family and [tool.hxpe.lock.may-diverge] aside). If a CPU-only extra needs a shared package at a "
    "version vLLM's side rejects, declare that package under [tool.hxpe.lock.may-diverge] in "
    "pyproject.toml with the reason, and rerun `make lock`."
)
GPU_HINT = (
    "constraints-gpu.txt is resolved jointly with vLLM over every extra but [tool.hxpe.lock] "
    "cpu-only-extras. If a new extra's dependency cannot share an environment with vLLM, either "
    "steer it with a range at the top of constraints.txt, or declare the extra CPU-only in "
    "pyproject.toml (it is then not installed in .venv-vllm), and rerun `make lock`."
)


def write_locks(
    files: LockFiles, *, upgrade: bool = False
) -> tuple[dict[str, str], dict[str, str]]:
    """Resolve both locks and rewrite the two files; return (cpu pins, gpu pins)."""
    header = files.header()
    old_cpu = read_pins(files.cpu.read_text()[len(header) :])
    old_gpu = read_pins(files.gpu.read_text()) if files.gpu.exists() else old_cpu
    with tempfile.TemporaryDirectory() as tmp:
        gpu = compile_lock(
            files.pyproject,
            files.gpu_extras(),
            gpu_inputs(files),
            GPU_PLATFORM,
            Path(tmp) / "gpu.txt",
            preferences=old_gpu,
            upgrade=upgrade,
            hint=GPU_HINT,
        )
        cpu = compile_lock(
            files.pyproject,
            files.cpu_extras(),
            cpu_inputs(files, gpu),
            CPU_PLATFORM,
            Path(tmp) / "cpu.txt",
            preferences=old_cpu,
            upgrade=upgrade,
            hint=CPU_HINT,
        )
    inputs = files.input_pins()
    resolved = {n: v for n, v in cpu.items() if n not in inputs}
    files.cpu.write_text(header + "".join(f"{n}=={v}\n" for n, v in sorted(resolved.items())))
    files.gpu.write_text(GPU_HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(gpu.items())))
    return cpu, gpu


def cpu_lock(files: LockFiles) -> dict[str, str]:
    """Every pin the CPU environment installs with (header inputs for it included)."""
    pins = read_pins(files.cpu.read_text())
    gpu_only = gpu_input_pins(files)
    return {n: v for n, v in pins.items() if n not in gpu_only}


def check_locks(files: LockFiles) -> list[str]:
    """Resolve both environments pinned to their locks (metadata only); list what moved or is missing.

    With every package pinned there is one candidate per package, so the resolver cannot backtrack: it
    either reproduces the lock exactly or fails.
    """
    problems = []
    gpu_lock = read_pins(files.gpu.read_text())
    cpu = cpu_lock(files)
    with tempfile.TemporaryDirectory() as tmp:
        for name, extras, pins, platform in (
            ("constraints-gpu.txt", files.gpu_extras(), gpu_lock, GPU_PLATFORM),
            ("constraints.txt", files.cpu_extras(), cpu, CPU_PLATFORM),
        ):
            exact = [f"{n}=={v}" for n, v in sorted(pins.items())]
            got = compile_lock(
                files.pyproject, extras, exact, platform, Path(tmp) / "check.txt", preferences=pins
            )
            for pkg in sorted(set(got) | set(pins)):
                if got.get(pkg) != pins.get(pkg):
                    problems.append(
                        f"{name}: {pkg} locked {pins.get(pkg)}, resolves to {got.get(pkg)}"
                    )
    return problems


def shared_versions(cpu: dict[str, str], gpu: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Packages in both locks (the torch family aside): name -> (cpu version, gpu version)."""
    return {n: (cpu[n], gpu[n]) for n in sorted(set(cpu) & set(gpu)) if not TORCH_FAMILY.match(n)}


PUBLISHED_HINT = (
    "Every package constraints.txt shares with constraints-gpu.txt must satisfy vLLM's (and the other "
    "GPU-only inputs') published requirements, unless declared under [tool.hxpe.lock.may-diverge] "
    "with the reason. Rerun `make lock`, or declare the package."
)


def published_requirement_problems(
    files: LockFiles, may_diverge: set[str] | None = None
) -> list[str]:
    """The GPU-only inputs (``vllm==0.33.0``, ...) against constraints.txt's versions of the packages
    both locks share, but the torch family and ``may_diverge`` (default: the declared divergences).

    uv resolves the inputs with those versions pinned, from the inputs' published metadata (network);
    a conflict is reported with uv's explanation (``vllm==0.33.0 depends on pillow>=13.0.0 ...``).
    """
    free = set(files.may_diverge()) if may_diverge is None else may_diverge
    gpu = read_pins(files.gpu.read_text())
    shared = sorted(
        f"{n}=={cpu}"
        for n, (cpu, _) in shared_versions(cpu_lock(files), gpu).items()
        if n not in free
    )
    inputs = [f"{n}=={v}" for n, v in gpu_input_pins(files).items()]
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "gpu-only-inputs.in"
        requirements.write_text("".join(f"{line}\n" for line in inputs))
        try:
            compile_lock(
                requirements,
                [],
                shared,
                GPU_PLATFORM,
                Path(tmp) / "probe.txt",
                preferences=gpu,
                what=f"{', '.join(inputs)} with constraints.txt's shared versions",
                hint=PUBLISHED_HINT,
            )
        except RuntimeError as err:
            return [str(err)]
    return []


def divergences(cpu: dict[str, str], gpu: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Shared packages (the torch family aside) whose two pins differ: name -> (cpu, gpu).

    >>> divergences({"pillow": "12.3.0", "numpy": "2.3.5"}, {"pillow": "13.0.0", "numpy": "2.3.5"})
    {'pillow': ('12.3.0', '13.0.0')}
    """
    return {n: v for n, v in shared_versions(cpu, gpu).items() if v[0] != v[1]}


def divergence_problems(files: LockFiles) -> list[str]:
    """The two locks against the declared divergences (offline): every divergence declared, every
    declared one really diverging."""
    found = divergences(cpu_lock(files), read_pins(files.gpu.read_text()))
    declared = files.may_diverge()
    problems = [
        f"{n}: constraints.txt {cpu} vs constraints-gpu.txt {gpu}, not declared under "
        f"[tool.hxpe.lock.may-diverge]"
        for n, (cpu, gpu) in found.items()
        if n not in declared
    ]
    problems += [
        f"{n}: declared under [tool.hxpe.lock.may-diverge] but has one version in both locks (or is "
        f"not in both); remove it and rerun `make lock`"
        for n in declared
        if n not in found
    ]
    return problems


def unneeded_divergences(files: LockFiles) -> list[str]:
    """Declared divergences the CPU resolution no longer needs (network: uv against PyPI metadata).

    For each declared package, the CPU lock is re-resolved exactly as ``make lock`` does, but with that
    package too pinned to the GPU lock's version; if uv finds a solution, the divergence is not needed.
    """
    gpu = read_pins(files.gpu.read_text())
    declared = set(files.may_diverge())
    unneeded = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(declared & set(gpu)):
            try:
                compile_lock(
                    files.pyproject,
                    files.cpu_extras(),
                    cpu_inputs(files, gpu, declared - {name}),
                    CPU_PLATFORM,
                    Path(tmp) / "probe.txt",
                    preferences=cpu_lock(files),
                )
            except RuntimeError:
                continue
            unneeded.append(
                f"{name}: constraints.txt resolves with {name}=={gpu[name]} (constraints-gpu.txt's "
                f"version); remove it from [tool.hxpe.lock.may-diverge] and rerun `make lock`"
            )
    return unneeded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hxpe.environment.lock",
        description="Resolve constraints.txt and constraints-gpu.txt with uv (PyPI metadata only).",
    )
    parser.add_argument("--upgrade", action="store_true", help="Ignore the current pins.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="Only check that both locks resolve as they are, that their divergences are exactly "
        "the declared, still needed ones, and that the shared versions satisfy vLLM's published "
        "requirements.",
    )
    args = parser.parse_args(argv)
    files = LockFiles(repo_root())
    start = time.perf_counter()
    try:
        if args.check:
            problems = (
                check_locks(files)
                + divergence_problems(files)
                + unneeded_divergences(files)
                + published_requirement_problems(files)
            )
            print(
                "\n".join(problems)
                or "both locks resolve exactly as written; divergences as declared"
            )
            return 1 if problems else 0
        cpu, gpu = write_locks(files, upgrade=args.upgrade)
    except RuntimeError as err:
        print(f"make lock: {err}", file=sys.stderr)
        return 1
    print(
        f"constraints.txt: {len(cpu)} pins, constraints-gpu.txt: {len(gpu)} pins "
        f"({time.perf_counter() - start:.0f} s)"
    )
    for name, (cpu_version, gpu_version) in divergences(cpu, gpu).items():
        print(
            f"  diverges: {name} {cpu_version} (constraints.txt) vs {gpu_version} (constraints-gpu.txt)"
        )
    for problem in divergence_problems(files):
        print(f"  warning: {problem}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
