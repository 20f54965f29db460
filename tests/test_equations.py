"""hxpe.equations: notebook 04's equations recomputed from a traced forward pass. Every check passes
on the model as it is (both bases), and each fails when its equation is made wrong in the model."""

from __future__ import annotations

import pytest
import torch

import hxpe.model.bases.adaclip as adaclip_module
import hxpe.model.dinov2_prompt as vfm_module
import hxpe.model.losses as losses_module
import hxpe.model.model as hxpe_module
from hxpe import equations as eq
from hxpe.model.config import TrainConfig
from hxpe.model.losses import LossSpec, hxpe_loss
from hxpe.model.model import build_model
from hxpe.model.tiny import tiny_model_config


@pytest.fixture(scope="module")
def models():
    return {b: build_model(tiny_model_config(b)).eval() for b in ("adaclip", "anomalyclip")}


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 96, 96, generator=g)
    masks = (torch.rand(2, 1, 96, 96, generator=g) > 0.8).float()
    return images, masks, torch.tensor([1, 0])


def run_checks(model) -> list[eq.Check]:
    """Every check of notebook 04's walk-through on one traced pass of ``model``."""
    images, masks, labels = _batch()
    with torch.no_grad():
        out = model(
            images,
            ["small dark scratch", None],
            references=images.flip(0),
            class_names=["bottle", "screw"],
            trace=True,
        )
    cfg, a = model.cfg, model.cfg.arithmetic
    checks = [
        eq.check_layer_logits(out, a.temperature),
        eq.check_fused_map(out, a, cfg.vfm),
        eq.check_smoothing(out),
        eq.check_vfm_distance(out, cfg.vfm),
        eq.check_vfm_prompt(out, cfg.vfm),
        eq.check_key_bias(out, cfg.vfm, float(model.key_bias.beta)),
        eq.check_image_score(out, a.temperature),
    ]
    if out.trace.score_parts is not None:
        checks.append(eq.check_hsf(out, cfg.adaclip))
    spec = LossSpec.resolve(cfg, TrainConfig())
    terms = hxpe_loss(out, masks, labels, spec)
    return checks + eq.check_loss(out, masks, labels, terms, spec)


@pytest.mark.parametrize("base", ["adaclip", "anomalyclip"])
def test_every_equation_matches_the_model(models, base):
    checks = run_checks(models[base])
    assert all(c.passed for c in checks)
    names = " | ".join(c.name for c in checks)
    assert ("HSF image feature" in names) == (base == "adaclip")
    assert ("mean_logits" in names) == (base == "adaclip")
    assert ("CE(z, y)" in names) == (base == "anomalyclip")
    assert str(checks[0]).startswith("OK  per-layer logits")


def _scaled(fn, factor):
    def wrong(*args, **kwargs):
        return fn(*args, **kwargs) * factor

    return wrong


def _broken(monkeypatch, model, what: str) -> None:
    """Make one equation wrong in the model."""
    if what == "logits":
        logits = hxpe_module.layer_logits
        monkeypatch.setattr(hxpe_module, "layer_logits", lambda *a: [z * 1.01 for z in logits(*a)])
    elif what == "fusion":
        monkeypatch.setattr(hxpe_module, "fuse_layers", _scaled(hxpe_module.fuse_layers, 0.99))
    elif what == "smoothing":
        blur = hxpe_module.gaussian_blur
        monkeypatch.setattr(hxpe_module, "gaussian_blur", lambda m, s: blur(m, s * 1.5))
    elif what == "distance":
        dist = vfm_module.reference_distance
        monkeypatch.setattr(vfm_module, "reference_distance", lambda f, r, m: dist(f, r, not m))
    elif what == "calibration":
        monkeypatch.setattr(vfm_module, "calibrate", lambda d, s: (d / s[:, None] - 1).clamp(0, 1))
    elif what == "key_bias":
        monkeypatch.setattr(model.key_bias, "forward", lambda m: 2.0 * m.flatten(1))
    elif what == "hsf":
        parts = adaclip_module.hybrid_semantic_fusion
        monkeypatch.setattr(
            adaclip_module,
            "hybrid_semantic_fusion",
            lambda p, lg, c, k, f, a, cl: parts(p, lg, c, k, f, a / 2, cl),
        )
    elif what == "hsf_selection":  # the least abnormal patches instead of the most abnormal ones
        parts = adaclip_module.hybrid_semantic_fusion
        monkeypatch.setattr(
            adaclip_module,
            "hybrid_semantic_fusion",
            lambda p, lg, c, k, f, a, cl: parts(p, [-z for z in lg], c, k, f, a, cl),
        )
    elif what == "score":
        monkeypatch.setattr(model, "cfg", model.cfg.model_copy(update={"score_mode": "text_max"}))
    elif what == "dice":
        dice = losses_module.dice_loss
        monkeypatch.setattr(losses_module, "dice_loss", lambda p, t: dice(p, t, smooth=50.0))
    elif what == "image_loss":
        focal = losses_module.focal_loss
        monkeypatch.setattr(
            losses_module,
            "focal_loss",
            lambda p, t, g, s: focal(p, t, g + 1 if p.dim() == 2 else g, s),
        )


@pytest.mark.parametrize(
    ("what", "failing"),
    [
        ("logits", "per-layer logits"),
        ("fusion", "fused map A"),
        ("smoothing", "smoothed map"),
        ("distance", "distance to the reference"),
        ("calibration", "DINOv2 prompt map"),
        ("key_bias", "key bias"),
        ("hsf", "HSF image feature"),
        ("hsf_selection", "HSF patch selection"),
        ("score", "image score"),
        ("dice", "dice"),
        ("image_loss", "image loss Focal"),
    ],
)
def test_each_check_fails_when_its_equation_is_wrong(models, monkeypatch, what, failing):
    model = models["adaclip"]
    _broken(monkeypatch, model, what)
    with pytest.raises(eq.EquationMismatch, match=f"^{failing}") as err:
        run_checks(model)
    assert "notebook 04" in str(err.value)


def test_a_pass_without_trace_is_refused(models):
    images, _, _ = _batch()
    with torch.no_grad():
        out = models["adaclip"](images, [None, None])
    with pytest.raises(ValueError, match="call the model with trace=True"):
        eq.check_smoothing(out)


def test_the_text_max_score_has_its_own_equation(models, monkeypatch):
    from hxpe.model.model import map_range

    model = models["adaclip"]
    monkeypatch.setattr(model, "cfg", model.cfg.model_copy(update={"score_mode": "text_max"}))
    images, _, _ = _batch()
    with torch.no_grad():
        out = model(images, ["small dark scratch", None], references=images.flip(0), trace=True)
    a = model.cfg.arithmetic
    top = map_range(a.layer_fusion, len(model.cfg.clip.layers))
    check = eq.check_image_score(out, a.temperature, score_mode="text_max", top=top)
    assert check.passed and "max A" in check.name
    with pytest.raises(eq.EquationMismatch, match="^image score"):  # a wrong range is caught
        eq.check_image_score(out, a.temperature, score_mode="text_max", top=2 * top)
    with pytest.raises(eq.EquationMismatch, match="^image score"):  # as is the plain equation
        eq.check_image_score(out, a.temperature)
