"""The committed golden records (tests/golden/records, tests/golden/README.md): the authors' tensors of
files on disk, AdaCLIP's mosaic, and three optimiser steps per base, against ours; and each check
fails when its part is changed (the mask resize, the mosaic's tiles, the recipe's learning rate)."""

from __future__ import annotations

import json
import re

import pytest
import torch

import hxpe.equivalence_files as files_mod
from hxpe.cli import main
from hxpe.equivalence import check_files, check_folder
from hxpe.paths import resolve

RECORDS = resolve("tests/golden/records")


def _failed(rows) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.quantity for r in rows if not r.passed]


def test_records_regenerate_their_clip_and_pass_every_check(capsys):
    assert not (RECORDS / "clip.safetensors").exists()  # regenerated from clip_source.json
    assert main(["check-equivalence", str(RECORDS)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert "230/230 quantities within tolerance" in out
    for base, name in (
        ("anomalyclip[steps]", "step3.ctx_pos"),
        ("adaclip[steps]", "step3.clip_model.patch_token_layer.head.0.weight"),
        ("files", "mask.scratch_1562"),
        ("files", "mosaic.mask"),
    ):
        assert re.search(rf"^{re.escape(base)} +{re.escape(name)} .* pass$", out, re.M), name


def test_files_fail_when_masks_are_resized_without_antialiasing(monkeypatch):
    def naive(path, size):  # type: ignore[no-untyped-def]
        from hxpe.data.images import read_mask

        m = torch.from_numpy(read_mask(path).astype("float32"))[None, None]
        return (
            torch.nn.functional.interpolate(m, size=(size, size), mode="bilinear")[0] > 0.5
        ).float()

    assert _failed(check_files(RECORDS)) == []
    monkeypatch.setattr(files_mod, "load_mask", naive)
    failed = _failed(check_files(RECORDS))
    assert {"mask.scratch_1024", "mask.scratch_1562"} <= set(failed)


def test_files_fail_when_the_mosaic_is_built_otherwise(monkeypatch):
    from hxpe.data import mosaic

    def column_major(images, masks):  # type: ignore[no-untyped-def]
        order = [0, 2, 1, 3]
        return mosaic.combine([images[i] for i in order], [masks[i] for i in order])

    monkeypatch.setattr(files_mod, "combine", column_major)
    assert {"mosaic.image", "mosaic.mask"} <= set(_failed(check_files(RECORDS)))


@pytest.mark.slow  # 20-40 s: the AnomalyCLIP check once more (make test's budget); run with -m slow
def test_steps_fail_with_another_learning_rate(monkeypatch):
    import hxpe.equivalence as eq

    assert json.loads((RECORDS / "anomalyclip" / "steps.json").read_text())["lr"]["value"] == 0.001
    monkeypatch.setitem(eq.STEP_RECIPES, "anomalyclip", "hxpe")  # lr 0.01 instead of 0.001
    rows = check_folder(RECORDS, bases=["anomalyclip"])
    failed = _failed(rows)
    assert failed and all(q.startswith("step") for q in failed)
    assert not [r for r in rows if r.base == "anomalyclip" and not r.passed]
