"""Output options never remove what the program did not make (issue 24, item 1).

Every command with ``--out`` (``hxpe import-checkpoint``, ``hxpe prepare``, ``python -m hxpe.book``)
replaces a new, empty or previous output of its own kind; a folder of the user's is refused with one
message (unless ``--force``), and a file is always refused, with nothing left behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hxpe import book
from hxpe.atomic import OutputKind, OutputRefused, check_output_dir, replace_dir
from hxpe.cli import main
from hxpe.model.importers import authors_name, to_authors_layout
from hxpe.model.model import build_model
from hxpe.model.tiny import tiny_model_config

from support.raw_trees import write_mvtec_tree

KIND = OutputKind("thing", ("a.txt", "b.txt"))


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    return path


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_new_empty_and_previous_outputs_are_replaced(tmp_path: Path) -> None:
    previous = tmp_path / "prev"
    previous.mkdir()
    for name in ("a.txt", "b.txt", "extra.log"):
        (previous / name).write_text("old")
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (tmp_path / "new", empty, previous):
        staging = tmp_path / "staging"
        staging.mkdir()
        (staging / "a.txt").write_text("new")
        replace_dir(staging, target, KIND)
        assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
        assert (target / "a.txt").read_text() == "new"
    assert _siblings(tmp_path / "x") == ["empty", "new", "prev"]  # no staging or .old left


def test_a_user_folder_is_refused_naming_what_it_lacks_and_force_replaces_it(
    tmp_path: Path,
) -> None:
    mine = _user_folder(tmp_path / "mine")
    (mine / "a.txt").write_text("half a match is not a previous output")
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(OutputRefused) as err:
        replace_dir(staging, mine, KIND)
    assert str(err.value) == (
        f"--out {mine} holds files that are not a previous thing (it lacks b.txt): refusing to "
        "replace it. Choose a new or empty folder, or pass --force to replace it and everything in "
        "it."
    )
    assert (mine / "thesis.tex").read_text() == "three years of work"
    assert staging.is_dir()  # the caller's staging folder is the caller's to remove
    replace_dir(staging, mine, KIND, force=True)
    assert list(mine.iterdir()) == []


@pytest.mark.parametrize("force", [False, True])
def test_a_file_is_refused_even_with_force(tmp_path: Path, force: bool) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(OutputRefused, match=r"notes.txt is a file, not a folder: give the path"):
        check_output_dir(target, KIND, force=force)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OutputRefused, match="link is a file"):
        check_output_dir(link, KIND, force=force)
    assert target.read_text() == "mine"


# -------------------------------------------------------------------------- hxpe import-checkpoint


def _pth(path: Path) -> Path:
    """A tiny AnomalyCLIP checkpoint in the authors' format."""
    config = tiny_model_config("anomalyclip", explain={"enabled": False}, vfm={"enabled": False})
    state = {
        authors_name("anomalyclip", n): to_authors_layout("anomalyclip", n, p.detach())
        for n, p in build_model(config).trainable_state().items()
    }
    torch.save({"prompt_learner": state}, path)
    return path


def test_import_checkpoint_refuses_a_user_folder_and_a_file_then_replaces_with_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _pth(tmp_path / "ckpt.pth")
    mine = _user_folder(tmp_path / "out" / "mine")
    command = ["import-checkpoint", "anomalyclip", str(source), "--out"]
    assert main([*command, str(mine)]) == 2
    assert f"--out {mine} holds files that are not a previous checkpoint" in caplog.text
    assert "trainable.safetensors, config.json" in caplog.text and "--force" in caplog.text
    assert (mine / "thesis.tex").is_file() and _siblings(mine) == ["mine"]

    (tmp_path / "out" / "file").write_text("x")
    assert main([*command, str(tmp_path / "out" / "file")]) == 2
    assert "file is a file, not a folder" in caplog.text
    assert _siblings(mine) == ["file", "mine"]  # no .file.old, no staging folder

    assert main([*command, str(mine), "--force"]) == 0
    assert not (mine / "thesis.tex").exists() and (mine / "config.json").is_file()
    assert main([*command, str(mine)]) == 0  # a previous checkpoint is replaced without --force
    assert _siblings(mine) == ["file", "mine"]


# -------------------------------------------------------------------------------- hxpe prepare


def test_prepare_refuses_a_user_folder_and_a_file_then_replaces_a_previous_index(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = write_mvtec_tree(tmp_path / "m", {"bottle": {"train": 1, "good": 1, "crack": 1}})
    out = tmp_path / "out"
    mine = _user_folder(out / "mine")
    command = ["prepare", "mvtec", "--root", str(root), "--classes", "bottle"]
    command += ["--allow-count-mismatch", "--out"]
    assert main([*command, str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hxpe prepare: error: --out {mine} holds files that are not a previous ")
    assert "dataset index (it lacks index.csv, dataset.json)" in err and err.count("\n") == 1
    (out / "file").write_text("x")
    assert main([*command, str(out / "file")]) == 2
    assert "file is a file, not a folder" in capsys.readouterr().err
    assert (mine / "thesis.tex").is_file() and _siblings(mine) == ["file", "mine"]

    index = out / "index"
    assert main([*command, str(index)]) == 0
    (index / "notes.md").write_text("a note in a previous index goes with it")
    assert main([*command, str(index)]) == 0
    assert sorted(p.name for p in index.iterdir()) == ["dataset.json", "index.csv", "meta.json"]
    assert main([*command, str(mine), "--force"]) == 0
    assert not (mine / "thesis.tex").exists()
    assert _siblings(mine) == ["file", "index", "mine"]


# ---------------------------------------------------------------------------- python -m hxpe.book


def test_book_refuses_a_user_folder_and_a_file_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(book, "executed_notebooks", lambda results: pytest.fail("built"))
    mine = _user_folder(tmp_path / "mine")
    assert book.main(["--results", str(tmp_path), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"python -m hxpe.book: error: --out {mine} holds files that are not a previous book (it "
        "lacks index.html, .buildinfo): refusing to replace it. Choose a new or empty folder, or "
        "pass --force to replace it and everything in it.\n"
    )
    (tmp_path / "file").write_text("x")
    assert book.main(["--results", str(tmp_path), "--out", str(tmp_path / "file")]) == 2
    assert "file is a file, not a folder" in capsys.readouterr().err
    assert (mine / "thesis.tex").is_file() and _siblings(mine) == ["file", "mine"]
    # a previous book is accepted: the build goes on (and stops at the missing notebooks here)
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "index.html").write_text("<html>")
    (previous / ".buildinfo").write_text("# Sphinx")
    with pytest.raises(pytest.fail.Exception, match="built"):
        book.main(["--results", str(tmp_path), "--out", str(previous)])


def test_a_link_to_a_previous_output_is_replaced_without_touching_the_folder_it_points_to(
    tmp_path: Path,
) -> None:
    pointed = tmp_path / "elsewhere"
    pointed.mkdir()
    for name in ("a.txt", "b.txt"):
        (pointed / name).write_text("old")
    link = tmp_path / "out"
    link.symlink_to(pointed)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "a.txt").write_text("new")
    replace_dir(staging, link, KIND)
    assert not link.is_symlink() and (link / "a.txt").read_text() == "new"
    assert sorted(p.name for p in pointed.iterdir()) == ["a.txt", "b.txt"]
    assert _siblings(link) == ["elsewhere", "out"]
