"""`make clean` and every target taking PROFILE refuse a value that is not one profile name (issue 24,
item 2): the Makefile checks PROFILE before any target runs, in a copy of it here (`make`, for real)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hxpe.paths import repo_root

EMPTY = "is empty: name a profile (notebooks/params/<name>.yaml), e.g. PROFILE=demo"
PATH = "holds a path separator: name a profile, not a path"
DOTS = "is '.' or holds '..': name a profile, not a path"
WORDS = "holds several words: name one profile"
CHARS = "holds other characters than letters, digits, '.', '_' and '-'"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The Makefile in ``tmp_path/repo`` with two profiles' results, a build folder, and a user's
    folder beside the repository that ``PROFILE=../../x`` would reach."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(repo_root() / "Makefile", repo / "Makefile")
    for rel in ("results/demo/a.txt", "results/paper/b.txt", "build/book/c.html", "../x/keep.txt"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(rel)
    return repo


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _make(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # a make of its own: none of a calling make's variables or jobserver (make test runs lint and unit
    # under -j2, whose MAKEFLAGS would make this make print a jobserver warning first)
    skip = ("PROFILE", "HXPE_RESULTS_ROOT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    return subprocess.run(
        ["make", "-C", str(repo), "--no-print-directory", *args],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.mark.parametrize(
    ("profile", "why"),
    [
        ("", EMPTY),
        ("   ", EMPTY),
        ("../../x", PATH),
        ("a\\b", PATH),
        ("..", DOTS),
        (".", DOTS),
        ("demo paper", WORDS),
        ("*", CHARS),
        ("x;y", CHARS),
    ],
)
def test_clean_refuses_a_profile_that_is_not_one_name_and_removes_nothing(
    repo: Path, profile: str, why: str
) -> None:
    before = _files(repo.parent)
    done = _make(repo, "clean", f"PROFILE={profile}")
    assert done.returncode == 2 and done.stdout == ""
    line = f"*** PROFILE='{profile.strip()}' {why}; nothing was run.  Stop.\n"
    assert done.stderr.startswith("Makefile:") and done.stderr.endswith(line)
    assert done.stderr.count("\n") == 1
    assert _files(repo.parent) == before


@pytest.mark.parametrize("target", ["book", "verify", "all", "evaluate", "app", "protocol"])
def test_every_target_taking_profile_refuses_a_path(repo: Path, target: str) -> None:
    done = _make(repo, "-n", target, "PROFILE=../x")
    assert done.returncode == 2 and done.stdout == ""
    assert f"PROFILE='../x' {PATH}; nothing was run." in done.stderr


def test_clean_of_one_profile_removes_its_results_and_build_only(repo: Path) -> None:
    done = _make(repo, "clean", "PROFILE=demo")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "rm -rf results/demo build\n"
    assert _files(repo.parent) == ["repo/Makefile", "repo/results/paper/b.txt", "x/keep.txt"]
