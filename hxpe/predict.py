"""Score and explain one image of your own: ``hxpe predict`` and :func:`predict`.

The image (any size, any mode Pillow reads: RGB, RGBA, grayscale, 16-bit, palette, ...) is read by the
project's one reader (:mod:`hxpe.data.images`, the same as evaluation's), resized to the model's
input, and scored by a trained HXPE checkpoint. The explainable
phrase comes from a description you give (``description=``, run through the configured extractor and
the anti-false-alarm verdict) or from the agent (``agent=<backend>``: the describer first compares the
image with ``reference``, then the extractor). Without either, the model uses its generic prompts.

Example (a scratched part and a defect-free reference, the demo profile's classical describer and
rule extractor, a tiny random-init checkpoint: the score itself means nothing):
    >>> from hxpe.predict import predict
    >>> result = predict(
    ...     part_png, reference=reference_png, checkpoint=checkpoint, agent="classical"
    ... )
    >>> result.phrase, result.verdict
    ('medium-sized dark crack on the upper left', True)
    >>> result.anomaly_map.shape, 0.0 <= result.image_score <= 1.0
    ((112, 112), True)
    >>> sorted(path.name for path in result.save(tmp_path).values())
    ['part_dinov2_prompt.png', 'part_overlay.png', 'part_prediction.json']
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from hxpe.backbones import DEMO_BACKBONES_LABEL
from hxpe.config import Config, load_config
from hxpe.data.images import ImageReadError, ImageTooLargeError, read_image, to_rgb, to_tensor
from hxpe.model.loading import is_weights_file
from hxpe.versions import software_versions

__all__ = [
    "ImageReadError",
    "ImageTooLargeError",
    "Prediction",
    "load_model",
    "model_inputs",
    "predict",
    "read_image",
    "to_rgb",
    "to_tensor",
]

log = logging.getLogger(__name__)

DEFAULT_PARAMS = "notebooks/params/demo.yaml"
AREA_THRESHOLD = 0.5


# --------------------------------------------------------------------------------------------------
# The explanation: description -> phrase -> verdict
# --------------------------------------------------------------------------------------------------


@dataclass
class Explained:
    """The agent's chain for one image (``phrase`` is already gated by the verdict)."""

    description: str | None = None
    extraction: dict[str, Any] | None = None
    verdict: bool | None = None
    phrase: str | None = None
    backends: dict[str, str] = field(default_factory=dict)


def describe_image(
    cfg: Config,
    backend: str,
    image: Image.Image,
    reference: Image.Image | None,
    class_name: str,
) -> str:
    """Run the describer ``backend`` on (reference, image); the description text."""
    from hxpe.agent.backend_base import DescribeRequest, make_describer
    from hxpe.agent.parsing import check_description
    from hxpe.agent.runner import run_with_retries
    from hxpe.agent.templates import load_template

    dcfg = cfg.agent.describe.model_copy(update={"backend": backend})
    template = load_template(dcfg.template)
    if reference is None and template.needs_reference:
        if backend == "classical":
            raise ValueError(
                "--agent classical compares the image with a normal reference: pass "
                "--reference IMG (a defect-free image of the same part)."
            )
        log.info("no reference image: describing with template describe_noref_v1")
        template = load_template("describe_noref_v1")
    request = DescribeRequest(
        image_id="predict",
        class_name=class_name,
        prompt=template.render(class_name=class_name),
        image=image,
        reference=reference if template.needs_reference else None,
    )
    outcome = run_with_retries([request], make_describer(dcfg).describe, check_description, dcfg)[0]
    if not outcome.ok:
        raise ValueError(f"the {backend} describer failed on this image: {outcome.error}")
    return outcome.value


def extract_phrase(cfg: Config, description: str) -> Explained:
    """Run the configured extractor and the anti-false-alarm verdict on ``description``."""
    from hxpe.agent.extract import extract_one

    ecfg = cfg.agent.extract
    backends = {"extract": f"{ecfg.backend}:{ecfg.model_id}"}
    record = extract_one(description, cfg.agent, clip=cfg.model.clip)
    if record["status"] != "ok":
        log.warning("extraction failed (%s); the model uses its generic prompts", record["error"])
        return Explained(description, {"error": record["error"]}, None, None, backends)
    fields = {k: record[k] for k in ("anomaly", "defect_type", "location", "appearance", "phrase")}
    judged = record["verdict"]
    return Explained(
        description, fields, judged, record["phrase"] or None if judged else None, backends
    )


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------

_MODELS: dict[tuple[str, float], nn.Module] = {}


def _checkpoint_key(directory: Path) -> tuple[str, float]:
    weights = directory / "trainable.safetensors"
    return str(directory.resolve()), weights.stat().st_mtime if weights.is_file() else 0.0


def load_model(cfg: Config, checkpoint: str | Path | None) -> tuple[nn.Module, str]:
    """The model of ``checkpoint`` (or of the profile's main variant); cached per process."""
    from pydantic import ValidationError

    from hxpe.model.checkpoint import load_checkpoint, model_for_evaluation

    if checkpoint is not None:
        directory = Path(checkpoint).expanduser()
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(
                f"{directory} is not a checkpoint directory (no config.json); pass a directory "
                f"like results/<profile>/checkpoints/<direction>/<variant>."
            )
        key = _checkpoint_key(directory)
        if key not in _MODELS:
            try:
                _MODELS[key] = load_checkpoint(directory).eval()
            except ValidationError as err:
                raise ValueError(
                    f"Checkpoint {directory} does not match this code's model config: "
                    f"{directory / 'config.json'} fails validation ({err.error_count()} errors; "
                    f"first: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}). It was written by "
                    f"other code; retrain it or pick another checkpoint."
                ) from err
        return _MODELS[key], str(directory)
    direction = cfg.evaluation.directions[0].name
    directory = cfg.layout.checkpoint_dir(direction, cfg.main_variant)
    key = _checkpoint_key(directory)
    if key not in _MODELS:
        _MODELS[key] = model_for_evaluation(cfg, direction, cfg.main_variant, cfg.results_dir)
    return _MODELS[key], str(directory)


def _model_provenance(model: nn.Module, source: str) -> dict[str, Any]:
    model_cfg = getattr(model, "cfg", None)
    out: dict[str, Any] = {"checkpoint": source}
    if model_cfg is not None:
        dumped = json.dumps(model_cfg.model_dump(mode="json"), sort_keys=True)
        out |= {
            "base": model_cfg.base,
            "clip": model_cfg.clip.model_name,
            "clip_pretrained": model_cfg.clip.pretrained,
            "explain": model_cfg.explain.enabled,
            "vfm": model_cfg.vfm.enabled,
            "model_config_sha256": hashlib.sha256(dumped.encode()).hexdigest()[:16],
        }
        if model_cfg.clip.pretrained is None:
            out["note"] = "random-init CLIP (tiny test model): the score shows the pipeline only"
        elif is_weights_file(model_cfg.clip.pretrained):
            out["note"] = f"demo CLIP ({DEMO_BACKBONES_LABEL})"
    return out


# --------------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """What :func:`predict` returns; :meth:`save` writes the overlay PNG and the JSON."""

    image_path: Path
    image: Image.Image  # the RGB input at its own size
    image_score: float
    anomaly_map: np.ndarray  # [S, S] float32 at the model input size
    vfm_prompt: np.ndarray | None
    explained: Explained
    reference_path: Path | None
    provenance: dict[str, Any]
    # (word, score(full phrase) - score(without the word)); None when not asked or no phrase
    word_importance: list[tuple[str, float]] | None = None

    @property
    def description(self) -> str | None:
        return self.explained.description

    @property
    def phrase(self) -> str | None:
        return self.explained.phrase

    @property
    def verdict(self) -> bool | None:
        return self.explained.verdict

    @property
    def map_stats(self) -> dict[str, float]:
        """``max``, ``mean`` and ``area_above_0.5`` (fraction of pixels) of the anomaly map."""
        m = self.anomaly_map
        return {
            "max": float(m.max()),
            "mean": float(m.mean()),
            f"area_above_{AREA_THRESHOLD}": float((m > AREA_THRESHOLD).mean()),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": str(self.image_path),
            "reference": str(self.reference_path) if self.reference_path else None,
            "image_size": list(self.image.size),
            "model_input_size": list(self.anomaly_map.shape),
            "image_score": self.image_score,
            "map": self.map_stats,
            "description": self.description,
            "extraction": self.explained.extraction,
            "verdict": self.verdict,
            "phrase": self.phrase,
            "agent": self.explained.backends,
            "word_importance": (
                None
                if self.word_importance is None
                else [{"word": w, "delta_score": d} for w, d in self.word_importance]
            ),
            "provenance": self.provenance,
        }

    def overlay_map(self) -> np.ndarray:
        """The anomaly map resized (bilinear) to the input image's own size."""
        t = torch.from_numpy(self.anomaly_map)[None, None]
        w, h = self.image.size
        return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear")[0, 0].numpy()

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write into ``out_dir``: ``<stem>_overlay.png``, ``<stem>_dinov2_prompt.png`` (when the
        model has a DINOv2 prompt), ``<stem>_words.png`` (when the word importance was computed)
        and ``<stem>_prediction.json``; returns their paths by kind."""
        import matplotlib.pyplot as plt

        from hxpe.figures.prediction import prediction_figure, prompt_figure, word_importance_figure

        out = Path(out_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        stem = self.image_path.stem
        figures = {"overlay": prediction_figure}
        if self.vfm_prompt is not None:
            figures["dinov2_prompt"] = prompt_figure
        if self.word_importance is not None:
            figures["words"] = word_importance_figure
        paths: dict[str, Path] = {}
        for kind, make in figures.items():
            paths[kind] = out / f"{stem}_{kind}.png"
            fig = make(self)
            fig.savefig(paths[kind], dpi=120, bbox_inches="tight")
            plt.close(fig)
        paths["json"] = out / f"{stem}_prediction.json"
        paths["json"].write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
        return paths


def predict(
    image: str | Path,
    *,
    reference: str | Path | None = None,
    checkpoint: str | Path | None = None,
    description: str | None = None,
    agent: str | None = None,
    params: str | Path = DEFAULT_PARAMS,
    class_name: str = "object",
    image_size: int | None = None,
    model: nn.Module | None = None,
    words: bool = False,
    max_pixels: int | None = None,
) -> Prediction:
    """Score and explain one image (see the module docstring).

    Args:
        image, reference: paths of the image and of an optional defect-free image of the same part.
        checkpoint: a checkpoint directory; default the profile's main variant (first direction).
        description: your description of the image; goes through the configured extractor.
        agent: describer backend (``classical``, ``transformers``, ``vllm``); mutually exclusive
            with ``description``.
        params: the profile YAML whose agent settings (and default checkpoint) are used.
        class_name: the part's name in the describer's prompt.
        image_size: model input side; default the checkpoint's CLIP input size.
        model: an already loaded model (then ``checkpoint`` only labels the provenance).
        words: also compute the word importance of the phrase (leave one word out,
            :func:`hxpe.figures.words.word_importance`; one extra forward per word).
        max_pixels: refuse images with more pixels (:class:`ImageTooLargeError`).
    """
    if description is not None and agent is not None:
        raise ValueError("give either description or agent, not both")
    cfg = load_config(params)
    img = read_image(image, max_pixels=max_pixels)
    ref = read_image(reference, max_pixels=max_pixels) if reference is not None else None
    if model is None:
        model, source = load_model(cfg, checkpoint)
    else:
        source = str(checkpoint) if checkpoint is not None else "model passed by the caller"
    explained = Explained()
    if agent is not None:
        text = describe_image(cfg, agent, img, ref, class_name)
        explained = extract_phrase(cfg, text)
        explained.backends["describe"] = f"{agent}:{cfg.agent.describe.model_id}"
    elif description is not None:
        explained = extract_phrase(cfg, description)
    x, x_ref = model_inputs(img, ref, image_size or _input_size(model))
    out = _forward(model, x, x_ref, explained.phrase)
    importance = None
    if words and explained.phrase:
        from hxpe.figures.words import word_importance

        importance = word_importance(model, x, explained.phrase, x_ref)
    provenance = _model_provenance(model, source) | {
        "params": str(params),
        "profile": cfg.profile,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": software_versions(),
    }
    return Prediction(
        image_path=Path(image),
        image=img,
        image_score=out[0],
        anomaly_map=out[1],
        vfm_prompt=out[2],
        explained=explained,
        reference_path=Path(reference) if reference is not None else None,
        provenance=provenance,
        word_importance=importance,
    )


def _input_size(model: nn.Module) -> int:
    model_cfg = getattr(model, "cfg", None)
    if model_cfg is None:
        raise ValueError("the model has no .cfg to take its input size from; pass image_size")
    return int(model_cfg.clip.image_size)


def model_inputs(
    image: Image.Image, reference: Image.Image | None, size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's ``[3, size, size]`` inputs of the image and the reference (same as evaluation)."""
    return to_tensor(image, size), to_tensor(reference, size) if reference is not None else None


@torch.inference_mode()
def _forward(
    model: nn.Module,
    image: torch.Tensor,
    reference: torch.Tensor | None,
    phrase: str | None,
) -> tuple[float, np.ndarray, np.ndarray | None]:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = image[None].to(device)
    ref = reference[None].to(device) if reference is not None else None
    has_ref = torch.ones(1, dtype=torch.bool, device=device) if ref is not None else None
    model.eval()
    out = model(x, [phrase], ref, has_ref)
    vfm = out.vfm_prompt[0].float().cpu().numpy() if out.vfm_prompt is not None else None
    return float(out.image_score[0]), out.anomaly_map[0].float().cpu().numpy(), vfm


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _cmd_predict(args: argparse.Namespace) -> int:
    result = predict(
        args.image,
        reference=args.reference,
        checkpoint=args.checkpoint,
        description=args.description,
        agent=args.agent,
        params=args.params,
        class_name=args.class_name,
        image_size=args.image_size,
        words=args.word_importance,
    )
    paths = result.save(args.out)
    stats = result.map_stats
    print(
        f"image score {result.image_score:.4f}; map max {stats['max']:.4f}, mean "
        f"{stats['mean']:.4f}, area above {AREA_THRESHOLD}: {100 * stats[f'area_above_{AREA_THRESHOLD}']:.1f}%"
    )
    print(f"phrase: {result.phrase!r}; verdict: {result.verdict}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hxpe predict`` to the ``hxpe`` command."""
    p = subparsers.add_parser(
        "predict",
        help="Score and explain one image of your own (overlay PNG + JSON).",
        description="Score one image with a trained HXPE checkpoint and explain it: writes "
        "<stem>_overlay.png (image, anomaly map), <stem>_dinov2_prompt.png (when the model has "
        "a DINOv2 prompt), <stem>_words.png (with --word-importance) and <stem>_prediction.json "
        "(image score, map max/mean/area above 0.5, description, phrase, verdict, model "
        "provenance). Any image Pillow reads works (RGB, RGBA, grayscale, 16-bit, palette; any "
        "size); the project's one reader (hxpe.data.images) prepares it as evaluation does.",
    )
    p.add_argument("image", help="The image to score.")
    p.add_argument(
        "--reference",
        metavar="IMG",
        help="A defect-free image of the same part: the DINOv2 prompt compares with it and the "
        "describer (--agent) contrasts the image with it. Without it the DINOv2 prompt uses "
        "patch rarity within the image.",
    )
    p.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="Checkpoint directory (results/<profile>/checkpoints/<direction>/<variant>). "
        "Default: the profile's main variant for its first direction.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--description",
        metavar="TEXT",
        help="Your description of the image; the profile's extractor turns it into the "
        "explainable phrase and the anti-false-alarm verdict.",
    )
    source.add_argument(
        "--agent",
        metavar="BACKEND",
        choices=["classical", "transformers", "vllm"],
        help="Describe the image with this describer backend first (classical: needs "
        "--reference; transformers/vllm: the profile's VLM), then extract the phrase.",
    )
    p.add_argument(
        "--params",
        default=DEFAULT_PARAMS,
        metavar="FILE",
        help=f"Profile YAML for the agent settings and the default checkpoint (default {DEFAULT_PARAMS}).",
    )
    p.add_argument(
        "--class-name",
        default="object",
        help="The part's name in the describer's prompt (default: object).",
    )
    p.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help="Model input side in pixels (default: the checkpoint's CLIP input size).",
    )
    p.add_argument(
        "--word-importance",
        action="store_true",
        help="Also score the phrase with each word left out (one forward per word) and store "
        "each word's effect on the image score in the JSON.",
    )
    p.add_argument(
        "--out",
        default="predictions",
        metavar="DIR",
        help="Output directory (default predictions/).",
    )
    p.set_defaults(func=_cmd_predict)
