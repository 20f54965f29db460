"""``hxpe prepare`` through an argparse parser built with :func:`hxpe.data.cli.register`."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hxpe.data.cli import register
from hxpe.data.index import load_index
from hxpe.data.registry import load_specs

from support.raw_trees import write_mvtec_tree


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hxpe")
    register(top.add_subparsers(dest="command"))
    return top


def test_help_explains_every_option_and_download(capsys) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["prepare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--root", "--out", "--name", "--allow-count-mismatch", "--normal-dir"):
        assert option in text
    for kind, spec in load_specs().items():
        assert f"{kind}: {spec.title}" in text
    assert "https://www.mvtec.com/company/research/datasets/mvtec-ad" in text
    assert "weakly-supervised-learning-industrial-optical-inspection" in text  # URLs unbroken
    assert "train_test_split(random_state=42)" in text  # the KSDD split is documented


def test_prepare_writes_index_and_prints_counts(tmp_path: Path, capsys) -> None:
    root = write_mvtec_tree(tmp_path / "m", {"bottle": {"train": 2, "good": 1, "crack": 1}})
    out = tmp_path / "idx"
    args = parser().parse_args(
        [
            "prepare",
            "mvtec",
            "--root",
            str(root),
            "--out",
            str(out),
            "--name",
            "mv",
            "--classes",
            "bottle",
            "--allow-count-mismatch",
        ]
    )
    assert args.func(args) == 0
    index = load_index(out)
    assert index.name == "mv" and len(index.frame) == 4
    printed = capsys.readouterr().out
    assert "bottle" in printed and f"index written to {out}" in printed


def test_prepare_error_is_one_line_and_exit_code_2(tmp_path: Path, capsys) -> None:
    args = parser().parse_args(["prepare", "mpdd", "--root", str(tmp_path / "none")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("hxpe prepare: error: Dataset root") and "stepanje/MPDD" in err
