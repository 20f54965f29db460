"""The built wheel carries every data file the code reads, and every folder of hxpe is a package."""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
import zipfile

import hxpe
from hxpe.paths import repo_root


def test_walk_packages_finds_every_subpackage():
    found = {m.name for m in pkgutil.walk_packages(hxpe.__path__, "hxpe.") if m.ispkg}
    expected = {
        "hxpe.evaluation",
        "hxpe.evaluation.published",
        "hxpe.agent.templates",
        "hxpe.model.configs",
        "hxpe.environment",
    }
    assert expected <= found
    folders = {
        "hxpe." + ".".join(p.relative_to(repo_root() / "hxpe").parts)
        for p in (repo_root() / "hxpe").rglob("*")
        if p.is_dir() and p.name != "__pycache__"
    }
    assert folders <= found  # no folder left out of the package tree


def test_wheel_contains_the_jinja_template_and_the_data_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo_root() / name, src / name)
    shutil.copytree(
        repo_root() / "hxpe", src / "hxpe", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("hxpe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in (
        "hxpe/agent/templates/qwen_chat_template.jinja",
        "hxpe/agent/templates/describe_v1.yaml",
        "hxpe/evaluation/published/adaclip_table1.yaml",
        "hxpe/model/configs/hxpe-tiny-clip.json",
        "hxpe/weights.yaml",
        "hxpe/evaluation/__init__.py",
    ):
        assert rel in names, rel
    shipped = {str(p.relative_to(src)) for p in (src / "hxpe").rglob("*") if p.is_file()}
    assert shipped <= names  # every file of the source tree is in the wheel
