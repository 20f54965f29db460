"""``hxpe check-equivalence DIR``: the project's bases against golden outputs of the authors' code.

A golden folder (format: ../shared/golden/README.md) holds a random CLIP (``clip.json`` +
``clip.safetensors``, OpenAI key layout), ``inputs.safetensors`` (images, masks, labels), and per base
a folder with ``settings.json``, the authors' parameters in their own checkpoint format and
``expected*.safetensors``, computed by the authors' own code. This module loads the parameters through
:mod:`hxpe.model.importers`, runs :class:`hxpe.model.model.HXPEModel` at the base's defaults (sizes,
layers and prompt shapes from the folder), and compares every expected quantity:

* AnomalyCLIP: inference one image at a time (test.py's batch-1 loader), one training step on the
  whole batch (train.py);
* AdaCLIP: inference one image at a time with HSF off and on (NumPy seed 111 once, then the images in
  order), one batch-1 training step per image from the same parameters (HSF off, and on with the
  seed reset before each image).

Tolerances follow the folder's README (``|ours − theirs| <= atol + rtol·|theirs|``).

Example (one quantity, as ``hxpe check-equivalence`` prints it):
    >>> import torch
    >>> ours = torch.tensor([0.5, 0.25], dtype=torch.float64)
    >>> theirs = torch.tensor([0.5, 0.2501], dtype=torch.float64)
    >>> row = compare("adaclip", "image_score", ours, theirs, atol=1e-5, rtol=1e-3)
    >>> print(HEADER); print(row.line())
    base             quantity          max|diff|       atol     rtol  result
    adaclip          image_score       1.000e-04   1.00e-05    1e-03  pass
    >>> check_folder(tmp_path)
    Traceback (most recent call last):
    ...
    FileNotFoundError: ... is not a golden folder: clip.json is missing.

    The golden folder holds outputs of the authors' own code, which this repository does not ship
    (``../shared/golden``, or ``$HXPE_GOLDEN_DIR``); ``tests/test_golden_equivalence.py`` runs it:
    >>> rows = check_folder(golden_dir())  # golden outputs: not in the repository  # doctest: +SKIP
    >>> all(r.passed for r in rows)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from hxpe.model.checkpoint import load_checkpoint
from hxpe.model.config import ModelConfig, TrainConfig
from hxpe.model.importers import authors_name, import_checkpoint, to_authors_layout
from hxpe.model.losses import LossSpec, hxpe_loss
from hxpe.model.model import HXPEModel, gaussian_blur

log = logging.getLogger(__name__)

_BEHIND_FP16_CAST = {
    "anomalyclip": ("compound_prompts_text.",),
    "adaclip": ("clip_model.text_prompter.", "clip_model.visual_prompter.", "clip_model.dynamic_"),
}
# README "Measured effect of the fp16 casts": AdaCLIP quantities' max abs change when the .half()
# casts are made no-ops (per_layer_logits in logit units; the smoothed map is a convex combination of
# the map, so its change is bounded by the map's; every loss term gets loss_total's change).
ADACLIP_FP16_LOSS_CHANGE = 4.47e-4
ADACLIP_FP16_CHANGE = {
    "text_features": 4.29e-5,
    "per_layer_logits": 3.95e-3,
    "anomaly_map": 1.07e-4,
    "anomaly_map_smoothed": 1.07e-4,
    "image_score": 8.78e-5,
    **dict.fromkeys(
        ("loss_dice", "loss_focal", "loss_image", "loss_total"), ADACLIP_FP16_LOSS_CHANGE
    ),
}
CHECKPOINTS = {"anomalyclip": "prompt_learner.pth", "adaclip": "params.pth"}


def golden_dir() -> Path | None:
    """The golden folder: ``$HXPE_GOLDEN_DIR``, else ``../shared/golden`` beside the repository;
    None when it holds no ``clip.json``."""
    import os

    from hxpe.paths import repo_root

    env = os.environ.get("HXPE_GOLDEN_DIR")
    path = Path(env) if env else repo_root().parent / "shared" / "golden"
    return path if (path / "clip.json").is_file() else None


@dataclass
class Row:
    """One compared quantity."""

    base: str
    quantity: str
    max_abs_diff: float
    atol: float
    rtol: float
    passed: bool

    def line(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return (
            f"{self.base:<16} {self.quantity:<58} {self.max_abs_diff:>11.3e} "
            f"{self.atol:>10.2e} {self.rtol:>8.0e}  {verdict}"
        )


HEADER = f"{'base':<16} {'quantity':<58} {'max|diff|':>11} {'atol':>10} {'rtol':>8}  result"


def compare(
    base: str, name: str, ours: torch.Tensor, theirs: torch.Tensor, atol: float, rtol: float
) -> Row:
    ours, theirs = ours.detach().double().cpu(), theirs.double().cpu()
    if ours.shape != theirs.shape:
        log.error(
            "%s %s: shape %s, expected %s", base, name, tuple(ours.shape), tuple(theirs.shape)
        )
        return Row(
            base,
            f"{name} (shape {tuple(ours.shape)} != {tuple(theirs.shape)})",
            float("inf"),
            atol,
            rtol,
            False,
        )
    diff = (ours - theirs).abs()
    ok = bool((diff <= atol + rtol * theirs.abs()).all())
    return Row(base, name, float(diff.max()) if diff.numel() else 0.0, atol, rtol, ok)


def _tolerance(base: str, name: str, expected: dict[str, torch.Tensor]) -> tuple[float, float]:
    """The folder README's recommended tolerance for a quantity.

    Prompt tokens pass through the authors' ``.half()`` casts (AnomalyCLIP.py:246, adaclip.py:87,
    118, 123). We round them the same way, but a float32 difference in the last bit can still flip
    a rounding by one float16 ULP; the casts' effect cannot be emulated away. Gradients of the
    parameters behind a cast therefore get the README's tolerance for the casts (2e-3 relative to
    the gradient's max abs), and AdaCLIP's losses, whose dynamic prompts are rounded in the forward
    pass too, 3 x the README's measured change of loss_total from the casts. AdaCLIP's forward
    quantities downstream of the prompt tokens follow the same rule (3 x the README's measured
    change of that quantity, never less than the plain tolerance): the dynamic prompts come from
    the CLS of an unprompted pass, and a 1e-6 float32 difference there flips a few roundings
    (measured on a generated 322 px folder with GELU: up to 4 of the 320 text prompt values of a
    block one float16 ULP apart; text_features 1.06e-5, per_layer_logits 1.10e-3 from the
    authors'; on the shared golden folder one such flip moved AdaCLIP's image_score by 1.2e-5 on one
    CPU and by less than 1e-5 on another)."""
    t = expected[name]
    if name.startswith("grad."):
        if name[len("grad.") :].startswith(_BEHIND_FP16_CAST[base]):
            return 2e-3 * float(t.abs().max()), 2e-3
        return 1e-4 * float(t.abs().max()), 1e-4
    if base == "adaclip" and name in ADACLIP_FP16_CHANGE:
        atol, rtol = _plain_tolerance(name)
        return max(atol, 3 * ADACLIP_FP16_CHANGE[name]), rtol
    if name == "image_score_hsf":
        return 3.0 * float(expected["hsf_seed_spread"].max()), 0.0
    if name in ("loss_image_hsf", "loss_total_hsf"):
        return 3.0 * float(expected[f"{name}_seed_spread"].max()), 0.0
    return _plain_tolerance(name)


def _plain_tolerance(name: str) -> tuple[float, float]:
    """The README's tolerance for float32 arithmetic-order differences alone."""
    if name.startswith("anomaly_map"):
        return 4e-5, 1e-5
    if name == "per_layer_logits":
        return 1e-5 * 100.0, 1e-5
    return 1e-5, 1e-5


def _clip_weights(folder: Path, tmp: Path) -> Path:
    """The folder's ``clip.safetensors``, or, for a folder committed without it (``clip_source.json``:
    seed and sha256), the CLIP regenerated by :func:`hxpe.golden_clip.random_clip` into ``tmp``."""
    weights = folder / "clip.safetensors"
    source = folder / "clip_source.json"
    if weights.is_file() or not source.is_file():
        return weights.resolve()
    from safetensors.torch import save_file

    from hxpe.golden_clip import random_clip, state_sha256

    info = json.loads(source.read_text())
    sd = random_clip(int(info["seed"]), json.loads((folder / "clip.json").read_text()))
    if state_sha256(sd) != info["sha256"]:
        raise ValueError(
            f"The CLIP regenerated from {source} (seed {info['seed']}) does not match its sha256: "
            f"this torch draws other random numbers than the generator's. Regenerate the folder "
            f"with tests/golden/make_golden.py (tests/golden/README.md)."
        )
    save_file(sd, str(tmp / "clip.safetensors"))
    return tmp / "clip.safetensors"


@contextmanager
def golden_clip(folder: Path) -> Iterator[dict[str, Any]]:
    """``model.clip`` settings for the folder's CLIP: its JSON registered with open_clip under a
    name derived from its content, its safetensors (or the CLIP regenerated from its seed) as the
    pretrained file."""
    spec = (folder / "clip.json").read_bytes()
    name = "hxpe-golden-" + hashlib.sha256(spec).hexdigest()[:10]
    tmp = Path(tempfile.mkdtemp(prefix="hxpe-golden-"))
    try:
        (tmp / f"{name}.json").write_bytes(spec)
        yield {
            "model_name": name,
            "config_file": str(tmp / f"{name}.json"),
            "pretrained": str(_clip_weights(folder, tmp)),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _value(settings: dict, key: str, default: Any) -> Any:
    entry = settings.get(key)
    return entry.get("value", default) if isinstance(entry, dict) else default


def model_config(
    base: str, settings: dict, clip: dict, image_size: int, **extra: Any
) -> ModelConfig:
    """The base at its defaults on the golden CLIP (sizes and prompt shapes from ``settings``)."""
    data: dict[str, Any] = {
        "clip": {
            **clip,
            "image_size": image_size,
            "layers": _value(settings, "features_list", [6, 12, 18, 24]),
        },
        "base": base,
        "explain": {"enabled": False},
        "vfm": {"enabled": False},
        "sigma": 0.0,
    }
    if base == "anomalyclip":
        data["anomalyclip"] = {
            "n_ctx": _value(settings, "n_ctx", 12),
            "text_prompt_length": _value(settings, "t_n_ctx", 4),
            "text_prompt_depth": _value(settings, "depth", 9),
            "vv_last_n": _value(settings, "DPAM_layer", 20) - 1,
        }
    else:
        data["adaclip"] = {
            "prompt_depth": _value(settings, "prompting_depth", 4),
            "prompt_length": _value(settings, "prompting_length", 5),
            "k_clusters": _value(settings, "k_clusters", 20),
            "hsf_seed": _value(settings, "hsf_seed", 111),
            "hsf": False,
        }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return ModelConfig.model_validate(data)


def _load(base: str, folder: Path, cfg: ModelConfig, work: Path) -> HXPEModel:
    """The model of ``cfg`` with the authors' parameters, imported through the importer."""
    ckpt = import_checkpoint(base, folder / base / CHECKPOINTS[base], work / base, cfg)
    model = load_checkpoint(ckpt)
    model.cfg = cfg  # the imported config equals cfg up to the inferred shapes
    return model.eval()


def _grads(base: str, model: HXPEModel) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.trainable_state().items():
        key = authors_name(base, name)
        if key is not None and p.grad is not None:
            out[f"grad.{key}"] = to_authors_layout(base, name, p.grad.detach().clone())
    return out


def _train_step(
    model: HXPEModel,
    images: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(images, [None] * images.shape[0], class_names=classes)
    losses = hxpe_loss(out, masks, labels, LossSpec.resolve(model.cfg, TrainConfig()))
    losses["total"].backward()
    model.eval()
    return {k: v.detach() for k, v in losses.items()}, _grads(model.cfg.base, model)


def _rows(base: str, ours: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[Row]:
    rows = []
    for name in sorted(ours):
        if name not in expected:
            continue
        atol, rtol = _tolerance(base.split("[")[0], name, expected)
        rows.append(compare(base, name, ours[name], expected[name], atol, rtol))
    return rows


# Parameters after k optimiser steps from identical parameters and batches (steps.safetensors):
# |ours - theirs| <= STEP_ATOL[base] (absolute; the recipe's lr sets the scale). Adam divides each
# gradient by its running RMS, so its first steps move a parameter by about lr whatever the
# gradient's size: a near-zero gradient component that the fp16 casts round differently moves
# differently. Measured on tests/golden/records (tests/golden/README.md): AnomalyCLIP 1.0e-6 (lr
# 0.001; atol 1e-5, the README's plain tolerance), AdaCLIP 1.5e-4 (lr 0.01; atol 5e-4, about 3 x).
STEP_ATOL = {"anomalyclip": 1e-5, "adaclip": 5e-4}
STEP_RECIPES = {"anomalyclip": "anomalyclip_paper", "adaclip": "adaclip"}


def check_steps(
    base: str,
    model: HXPEModel,
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str] | None]],
    expected: dict[str, torch.Tensor],
    initial: dict[str, torch.Tensor],
) -> list[Row]:
    """Run the base's recipe optimiser (:func:`hxpe.train.make_optimizer`: AnomalyCLIP Adam lr
    0.001, AdaCLIP AdamW lr 0.01, β (0.5, 0.999)) for as many steps as ``expected`` records, step
    ``k`` on ``batches[(k - 1) % len(batches)]``, and compare the parameters after each step.
    ``initial``: the authors' starting parameters (their ``.safetensors`` beside the checkpoint)."""
    from hxpe.train import make_optimizer

    n = max(int(k.split(".")[0][len("step") :]) for k in expected)
    recipe_cfg = model.cfg.model_copy(update={"recipe": STEP_RECIPES[base]})
    params = [p for p in model.trainable_state().values() if p.requires_grad]
    optimizer = make_optimizer(params, TrainConfig(), recipe_cfg)
    ours: dict[str, torch.Tensor] = {}
    for k in range(1, n + 1):
        _train_step(model, *batches[(k - 1) % len(batches)])
        optimizer.step()
        for name, p in model.trainable_state().items():
            key = authors_name(base, name)
            if key is not None and f"step{k}.{key}" in expected:
                ours[f"step{k}.{key}"] = to_authors_layout(base, name, p.detach().clone())
    # the authors' parameters we do not have (AdaCLIP's unused text prompt of block 1) must be the
    # ones they started from: no gradient reaches them, so their optimiser leaves them alone
    for name in sorted(set(expected) - set(ours)):
        key = name.split(".", 1)[1]
        if key not in initial:
            raise ValueError(f"{base} steps: no parameter of ours for {name}")
        ours[name] = initial[key]
    return [
        compare(f"{base}[steps]", name, ours[name], expected[name], STEP_ATOL[base], 0.0)
        for name in sorted(ours)
    ]


def check_anomalyclip(folder: Path, inputs: dict, clip: dict, work: Path) -> list[Row]:
    settings = json.loads((folder / "anomalyclip" / "settings.json").read_text())
    expected = load_file(str(folder / "anomalyclip" / "expected.safetensors"))
    images, masks, labels = inputs["images"], inputs["masks"], inputs["labels"]
    cfg = model_config("anomalyclip", settings, clip, images.shape[-1])
    model = _load("anomalyclip", folder, cfg, work)
    sigma = float(_value(settings, "sigma", 4))
    with torch.no_grad():
        outs = [model(images[b : b + 1], [None]) for b in range(images.shape[0])]
    amap = torch.cat([o.anomaly_map for o in outs])
    ours = {
        "text_features": outs[0].text_features[0],
        "per_layer_maps": torch.stack(
            [
                torch.cat([o.layer_maps[li][:, 1] for o in outs])
                for li in range(len(outs[0].layer_maps))
            ]
        ),
        "anomaly_map": amap,
        "anomaly_map_smoothed": gaussian_blur(amap, sigma),
        "image_features": torch.cat([o.image_features for o in outs]),
        "image_score": torch.cat([o.image_score for o in outs]),
    }
    losses, grads = _train_step(model, images, masks, labels, None)
    ours |= {f"loss_{k}": v for k, v in losses.items()} | grads
    rows = _rows("anomalyclip", ours, expected)
    steps = folder / "anomalyclip" / "steps.safetensors"
    if steps.is_file():
        batch = [(images, masks, labels, None)]
        initial = load_file(str(folder / "anomalyclip" / "prompt_learner.safetensors"))
        rows += check_steps("anomalyclip", model, batch, load_file(str(steps)), initial)
    return rows


def _adaclip_forward(
    model: HXPEModel, images: torch.Tensor, classes: list[str], sigma: float
) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        outs = [
            model(images[b : b + 1], [None], class_names=classes) for b in range(images.shape[0])
        ]
    amap = torch.cat([o.anomaly_map for o in outs])
    return {
        "text_features": torch.cat([o.text_features for o in outs]),
        "per_layer_logits": torch.stack(
            [
                torch.cat([o.layer_logits[li] for o in outs])
                for li in range(len(outs[0].layer_logits))
            ]
        ),
        "anomaly_map": amap,
        "anomaly_map_smoothed": gaussian_blur(amap, sigma),
        "cls_features": torch.cat([o.image_features for o in outs]),
        "image_score": torch.cat([o.image_score for o in outs]),
    }


def _with_hsf(model: HXPEModel, on: bool) -> None:
    """Switch AdaCLIP's hybrid semantic fusion on or off in the model's config and in its base,
    which holds its own section (:class:`hxpe.model.bases.adaclip.AdaClipPrompter`)."""
    cfg = model.cfg
    section = cfg.adaclip.model_copy(update={"hsf": on})
    model.cfg = cfg.model_copy(update={"adaclip": section})
    model.prompter.settings = section


def check_adaclip(
    folder: Path, inputs: dict, clip: dict, work: Path, expected_file: str, activation: str
) -> list[Row]:
    settings = json.loads((folder / "adaclip" / "settings.json").read_text())
    expected = load_file(str(folder / "adaclip" / expected_file))
    images, masks, labels = inputs["images"], inputs["masks"], inputs["labels"]
    classes = [_value(settings, "class_name", "object")]
    cfg = model_config("adaclip", settings, {**clip, "activation": activation}, images.shape[-1])
    model = _load("adaclip", folder, cfg, work / activation)
    sigma = 4.0
    ours = _adaclip_forward(model, images, classes, sigma)
    seed = cfg.adaclip.hsf_seed
    if "image_score_hsf" in expected:
        _with_hsf(model, True)
        model.reset_rng(seed)
        with torch.no_grad():
            ours["image_score_hsf"] = torch.cat(
                [
                    model(images[b : b + 1], [None], class_names=classes).image_score
                    for b in range(images.shape[0])
                ]
            )
        _with_hsf(model, False)
    if "loss_total" in expected:
        initial = {k: v.detach().clone() for k, v in model.trainable_state().items()}
        per_image: dict[str, list[torch.Tensor]] = {}
        for b in range(images.shape[0]):
            one = (images[b : b + 1], masks[b : b + 1], labels[b : b + 1], classes)
            losses, grads = _train_step(model, *one)
            for k, v in {**{f"loss_{k}": v for k, v in losses.items()}, **grads}.items():
                per_image.setdefault(k, []).append(v)
            _with_hsf(model, True)
            model.reset_rng(seed)
            hsf_losses, _ = _train_step(model, *one)
            _with_hsf(model, False)
            per_image.setdefault("loss_total_hsf", []).append(hsf_losses["total"])
            per_image.setdefault("loss_image_hsf", []).append(hsf_losses["image"])
            for (
                name,
                p,
            ) in model.trainable_state().items():  # the authors' step starts from params.pth
                p.data.copy_(initial[name])
        ours |= {k: torch.stack(v) for k, v in per_image.items()}
    label = "adaclip" if activation == "quick_gelu" else f"adaclip[{activation}]"
    rows = _rows(label, ours, expected)
    steps = folder / "adaclip" / "steps.safetensors"
    if expected_file == "expected.safetensors" and steps.is_file():
        batches = [
            (images[b : b + 1], masks[b : b + 1], labels[b : b + 1], classes)
            for b in range(images.shape[0])
        ]
        initial = load_file(str(folder / "adaclip" / "params.safetensors"))
        rows += check_steps("adaclip", model, batches, load_file(str(steps)), initial)
    return rows


def check_files(folder: Path) -> list[Row]:
    """The ``files/`` records (:mod:`hxpe.equivalence_files`); none when the folder has none."""
    from hxpe.equivalence_files import files_quantities, files_tolerance

    if not (folder / "files" / "expected.safetensors").is_file():
        return []
    ours, theirs = files_quantities(folder / "files")
    return [
        compare("files", name, ours[name], theirs[name], *files_tolerance(name))
        for name in sorted(theirs)
    ]


def check_folder(folder: str | Path, bases: list[str] | None = None) -> list[Row]:
    """Every quantity of every base present in ``folder`` (and AdaCLIP's GELU file)."""
    folder = Path(folder)
    for required in ("clip.json", "inputs.safetensors"):
        if not (folder / required).is_file():
            raise FileNotFoundError(f"{folder} is not a golden folder: {required} is missing.")
    if not (folder / "clip.safetensors").is_file() and not (folder / "clip_source.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a golden folder: clip.safetensors (or clip_source.json) is missing."
        )
    raw = load_file(str(folder / "inputs.safetensors"))
    inputs = {
        "images": raw["images"].float(),
        "masks": raw["masks"].float(),
        "labels": raw["labels"],
    }
    present = [b for b in ("anomalyclip", "adaclip") if (folder / b).is_dir()]
    rows: list[Row] = []
    with torch.random.fork_rng(devices=[]), golden_clip(folder) as clip:
        work = Path(tempfile.mkdtemp(prefix="hxpe-equiv-"))
        try:
            checks: list[tuple[str, Callable[[], list[Row]]]] = [
                ("anomalyclip", lambda: check_anomalyclip(folder, inputs, clip, work)),
                (
                    "adaclip",
                    lambda: check_adaclip(
                        folder, inputs, clip, work, "expected.safetensors", "quick_gelu"
                    ),
                ),
            ]
            if (folder / "adaclip" / "expected_gelu.safetensors").is_file():
                checks.append(
                    (
                        "adaclip",
                        lambda: check_adaclip(
                            folder, inputs, clip, work, "expected_gelu.safetensors", "gelu"
                        ),
                    )
                )
            for base, run in checks:
                if base in present and (bases is None or base in bases):
                    rows += run()
            if bases is None or "files" in bases:
                rows += check_files(folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def _cmd_check(args: argparse.Namespace) -> int:
    rows = check_folder(args.folder, args.base or None)
    print(HEADER)
    for row in rows:
        print(row.line())
    failed = [r for r in rows if not r.passed]
    print(f"{len(rows) - len(failed)}/{len(rows)} quantities within tolerance")
    return 1 if failed or not rows else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check-equivalence",
        help="Run the bases at their defaults on a golden folder of the authors' outputs; exit 1 "
        "on any quantity out of tolerance.",
    )
    p.add_argument("folder", help="Golden folder (format: ../shared/golden/README.md).")
    p.add_argument(
        "--base",
        action="append",
        choices=["anomalyclip", "adaclip", "files"],
        help="Only this base, or the files records (repeatable).",
    )
    p.set_defaults(func=_cmd_check)
