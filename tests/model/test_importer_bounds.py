"""Bounded archives (issue 24): a small ``.pth`` that deflates hugely is refused before it is unpacked,
and prompt shapes beyond CLIP's are refused after loading."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import pytest
import torch

import hxpe.model.importers as importers
from hxpe.cli import main
from hxpe.model.importers import CheckpointRefused, import_checkpoint, read_tensors, unpacked_bytes

MIB = 1 << 20


def _deflated(obj: object, path: Path) -> None:
    """``torch.save(obj)`` with every archive member deflated (torch itself stores them raw)."""
    raw = io.BytesIO()
    torch.save(obj, raw)
    with (
        zipfile.ZipFile(raw) as src,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, True, 1) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))


def test_a_small_pth_that_deflates_hugely_is_refused_unopened(tmp_path, monkeypatch, caplog):
    """A genuine bomb at a test's scale: 96 MiB of tensor data in a file under 1 MB; the limit is
    lowered to 64 MiB (the default, 1 GiB, is checked the same way)."""
    bomb = tmp_path / "bomb.pth"
    prompt = torch.zeros(1, 1, 32768, 768)  # a "prompt" of 32768 tokens, 96 MiB
    _deflated({"prompt_learner": {"ctx_pos": prompt, "ctx_neg": prompt[:, :, :1]}}, bomb)
    assert bomb.stat().st_size < MIB
    assert unpacked_bytes(bomb) > 96 * MIB  # what the archive itself says it holds
    torch.load(bomb, weights_only=True)  # torch would really unpack it: a working bomb

    monkeypatch.setattr(importers, "MAX_UNPACKED_BYTES", 64 * MIB)

    def never(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("torch.load must not run on a refused file")

    monkeypatch.setattr(torch, "load", never)
    with caplog.at_level(logging.ERROR):
        rc = main(["import-checkpoint", "anomalyclip", str(bomb), "--out", str(tmp_path / "o")])
    assert rc == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith(f"{bomb}: refused, it unpacks to {unpacked_bytes(bomb):,} bytes")
    assert f"at most {64 * MIB:,} bytes" in line and "Check that this is the released file" in line
    assert not (tmp_path / "o").exists()


def test_the_default_limit_is_one_gib_and_counts_the_uncompressed_sizes(tmp_path):
    assert importers.MAX_UNPACKED_BYTES == 1 << 30
    path = tmp_path / "small.pth"
    torch.save({"a": torch.zeros(10), "b": torch.zeros(3, 4)}, path)
    with zipfile.ZipFile(path) as archive:
        assert unpacked_bytes(path) == sum(i.file_size for i in archive.infolist())
    assert unpacked_bytes(path) >= (10 + 12) * 4
    with pytest.raises(CheckpointRefused, match=r"unpacks to [\d,]+ bytes .* at most 100 bytes"):
        read_tensors(path, max_bytes=100)
    legacy = tmp_path / "legacy.pth"  # the pre-zip format is not compressed: its size counts
    torch.save({"a": torch.zeros(10)}, legacy, _use_new_zipfile_serialization=False)
    assert unpacked_bytes(legacy) == legacy.stat().st_size


@pytest.mark.parametrize(
    "state, message",
    [
        (
            {"ctx_pos": torch.zeros(1, 1, 500, 8), "ctx_neg": torch.zeros(1, 1, 500, 8)},
            r"prompt ctx_pos has shape \(500, 8\); a prompt holds at most 77 tokens",
        ),
        (
            {"ctx_pos": torch.zeros(1, 1, 4, 5000), "ctx_neg": torch.zeros(1, 1, 4, 5000)},
            r"prompt ctx_pos has shape \(4, 5000\); .* of width at most 4096",
        ),
        (
            {
                "ctx_pos": torch.zeros(1, 1, 4, 8),
                "ctx_neg": torch.zeros(1, 1, 4, 8),
                **{f"compound_prompts_text.{i}": torch.zeros(4, 8) for i in range(60)},
            },
            r"60 prompted blocks \(prompter.deep.\*\); a CLIP tower has at most 48",
        ),
    ],
)
def test_prompt_shapes_beyond_clip_are_refused(state, message, tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"prompt_learner": state}, path)
    with pytest.raises(CheckpointRefused, match=message):
        import_checkpoint("anomalyclip", path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
