"""The bases against golden outputs of the authors' own code (``hxpe check-equivalence``), and the
import of the authors' golden checkpoints (the importers on tiny checkpoints: tests/model/test_importers.py).

The golden folder is ``$HXPE_GOLDEN_DIR``, else ``../shared/golden`` beside the repository; tests that
need it are skipped with that reason when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hxpe.cli import main
from hxpe.equivalence import check_folder, golden_clip, golden_dir, model_config
from hxpe.hashing import file_sha256
from hxpe.model.checkpoint import load_checkpoint
from hxpe.model.importers import (
    authors_name,
    import_checkpoint,
    to_authors_layout,
)

GOLDEN = golden_dir()
needs_golden = pytest.mark.skipif(
    GOLDEN is None,
    reason="golden outputs of the authors' code not found (set HXPE_GOLDEN_DIR or place them in "
    "../shared/golden)",
)


def _report(rows: list) -> str:
    return "\n".join(r.line() for r in rows if not r.passed)


@needs_golden
def test_anomalyclip_matches_the_authors_outputs(capsys: pytest.CaptureFixture) -> None:
    assert main(["check-equivalence", str(GOLDEN), "--base", "anomalyclip"]) == 0
    out = capsys.readouterr().out
    for name in ("text_features", "per_layer_maps", "anomaly_map", "anomaly_map_smoothed"):
        assert f"anomalyclip      {name} " in out
    for name in ("image_features", "image_score", "loss_total", "grad.ctx_pos"):
        assert f"anomalyclip      {name} " in out
    assert "FAIL" not in out and "20/20 quantities within tolerance" in out


@needs_golden
def test_adaclip_matches_the_authors_outputs_quickgelu_and_gelu() -> None:
    rows = check_folder(GOLDEN, ["adaclip"])
    bases = {r.base for r in rows}
    assert bases == {"adaclip", "adaclip[gelu]"}
    names = {r.quantity for r in rows if r.base == "adaclip"}
    assert {"per_layer_logits", "cls_features", "image_score", "image_score_hsf"} <= names
    assert {"loss_total", "grad.clip_model.patch_token_layer.head.0.weight"} <= names
    assert all(r.passed for r in rows), _report(rows)


def test_check_equivalence_exits_1_on_any_failure(monkeypatch, capsys, tmp_path: Path) -> None:
    import hxpe.equivalence as eq

    rows = [
        eq.compare(
            "anomalyclip", "image_score", torch.tensor([0.5]), torch.tensor([0.5]), 1e-5, 1e-5
        ),
        eq.compare("anomalyclip", "loss_total", torch.tensor(1.0), torch.tensor(1.001), 1e-5, 1e-5),
    ]
    assert rows[0].passed and not rows[1].passed
    assert rows[1].max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    monkeypatch.setattr(eq, "check_folder", lambda folder, bases=None: rows)
    assert main(["check-equivalence", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "1/2 quantities within tolerance" in out
    monkeypatch.setattr(eq, "check_folder", lambda folder, bases=None: rows[:1])
    assert main(["check-equivalence", str(tmp_path)]) == 0


def test_check_equivalence_refuses_a_folder_without_golden_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="clip.json is missing"):
        check_folder(tmp_path)


@needs_golden
@pytest.mark.parametrize(
    ("kind", "file"), [("anomalyclip", "prompt_learner.pth"), ("adaclip", "params.pth")]
)
def test_import_round_trips_the_golden_checkpoints(kind: str, file: str, tmp_path: Path) -> None:
    source = GOLDEN / kind / file
    settings = json.loads((GOLDEN / kind / "settings.json").read_text())
    with golden_clip(GOLDEN) as clip:
        cfg = model_config(kind, settings, clip, 224)
        out = import_checkpoint(kind, source, tmp_path / "ckpt", cfg)
        model = load_checkpoint(out)
    raw = torch.load(source, weights_only=True)
    theirs = raw["prompt_learner"] if kind == "anomalyclip" else raw
    ours = model.trainable_state()
    assert ours
    for name, value in ours.items():
        key = authors_name(kind, name)
        assert torch.equal(to_authors_layout(kind, name, value.detach()), theirs[key].float()), name
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["source_sha256"] == file_sha256(source)
    assert provenance["kind"] == kind and provenance["renamed"]
    if kind == "anomalyclip":
        assert any(k.startswith("compound_prompt_projections") for k in provenance["ignored_keys"])


def test_tolerances_follow_the_golden_readme() -> None:
    """Strict fp32 tolerances, except what the authors' ``.half()`` casts reach (README table)."""
    from hxpe.equivalence import _tolerance

    expected = {
        "image_score": torch.tensor([0.5]),
        "grad.ctx_pos": torch.tensor([-4.0, 2.0]),
        "grad.compound_prompts_text.0": torch.tensor([1.0, -3.0]),
        "hsf_seed_spread": torch.tensor([0.01, 0.014]),
        "image_score_hsf": torch.tensor([0.5]),
    }
    for name in ("anomaly_map", "anomaly_map_smoothed", "per_layer_maps", "per_layer_logits"):
        expected[name] = torch.zeros(1)
    for name in ("loss_dice", "cls_features"):
        expected[name] = torch.zeros(())
    assert _tolerance("anomalyclip", "image_score", expected) == (1e-5, 1e-5)
    assert _tolerance("anomalyclip", "anomaly_map", expected) == (4e-5, 1e-5)
    assert _tolerance("anomalyclip", "per_layer_maps", expected) == (1e-5, 1e-5)
    assert _tolerance("anomalyclip", "grad.ctx_pos", expected) == (4e-4, 1e-4)
    assert _tolerance("anomalyclip", "grad.compound_prompts_text.0", expected) == (6e-3, 2e-3)
    assert _tolerance("adaclip", "image_score", expected) == pytest.approx((3 * 8.78e-5, 1e-5))
    assert _tolerance("adaclip", "anomaly_map_smoothed", expected) == pytest.approx((3.21e-4, 1e-5))
    assert _tolerance("adaclip", "per_layer_logits", expected) == pytest.approx((1.185e-2, 1e-5))
    assert _tolerance("adaclip", "loss_dice", expected) == pytest.approx((1.341e-3, 1e-5))
    assert _tolerance("adaclip", "cls_features", expected) == (1e-5, 1e-5)
    assert _tolerance("adaclip", "image_score_hsf", expected) == pytest.approx((0.042, 0.0))
