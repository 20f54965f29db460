"""Score and explain one image of your own: ``hxpe predict`` and :func:`predict`.

The image (any size, any mode Pillow reads: RGB, RGBA, grayscale, 16-bit, palette, ...) is read by the
project's one reader (:mod:`hxpe.data.images`, the same as evaluation's), resized to the checkpoint's
evaluation size and scored by a trained HXPE checkpoint with its protocol's settings
(:mod:`hxpe.predict_protocol`: a test image with the class's reference gives the protocol's stored
score and map; the JSON record's ``protocol`` says where a call differs). The explainable
phrase comes from a description you give (``description=``, run through the configured extractor and
the anti-false-alarm verdict) or from the agent (``agent=<backend>``: the describer first compares the
image with ``reference``, then the extractor). Without either, the model uses its generic prompts.
Images over ``max_pixels`` (``--max-pixels``, default :data:`MAX_PIXELS`, the app's) or with a side
under :data:`MIN_SIDE` are refused; the JSON record holds no absolute path (:func:`portable_path`).

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
from collections import OrderedDict
from contextlib import nullcontext
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
from hxpe.hashing import file_sha256
from hxpe.model.config import ModelConfig
from hxpe.model.loading import is_weights_file
from hxpe.paths import results_root, why_missing
from hxpe.predict_protocol import ProtocolCheck, protocol_settings
from hxpe.versions import software_versions

__all__ = [
    "ImageReadError",
    "ImageTooLargeError",
    "ImageTooSmallError",
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
MAX_PIXELS = 40_000_000  # 40 megapixels (the app's limit too): larger images are refused
MIN_SIDE = 8  # pixels: a smaller image has no detail to score (the model upsamples it)
IMAGE_SIZES = (16, 2048)  # sane model input sides for --image-size
MODEL_CACHE_SIZE = 2  # loaded checkpoints kept per process (least recently used evicted)


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


class ModelCache:
    """Loaded models by checkpoint (directory, weights' mtime), at most ``size``: the least
    recently used is dropped first, so a long-running app holds a bounded number of models."""

    def __init__(self, size: int = MODEL_CACHE_SIZE) -> None:
        self.size = size
        self._models: OrderedDict[tuple[str, float], nn.Module] = OrderedDict()

    def get(self, key: tuple[str, float], load: Any) -> nn.Module:
        """The model under ``key``, calling ``load()`` when it is not held."""
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = load()
        self._models[key] = model
        while len(self._models) > self.size:
            self._models.popitem(last=False)
        return model

    def keys(self) -> list[tuple[str, float]]:
        """The held keys, least recently used first."""
        return list(self._models)


MODELS = ModelCache()


def _checkpoint_key(directory: Path) -> tuple[str, float]:
    weights = directory / "trainable.safetensors"
    return str(directory.resolve()), weights.stat().st_mtime if weights.is_file() else 0.0


def _load_checkpoint_dir(directory: Path) -> nn.Module:
    from pydantic import ValidationError

    from hxpe.model.checkpoint import load_checkpoint

    try:
        return load_checkpoint(directory).eval()
    except ValidationError as err:
        raise ValueError(
            f"Checkpoint {directory} does not match this code's model config: "
            f"{directory / 'config.json'} fails validation ({err.error_count()} errors; "
            f"first: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}). It was written by "
            f"other code; retrain it or pick another checkpoint."
        ) from err


def load_model(cfg: Config, checkpoint: str | Path | None) -> tuple[nn.Module, str]:
    """The model of ``checkpoint`` (or of the profile's main variant); cached per process
    (:data:`MODELS`, the :data:`MODEL_CACHE_SIZE` most recently used)."""
    from hxpe.model.inference import model_for_evaluation

    if checkpoint is not None:
        directory = Path(checkpoint).expanduser()
        if directory.is_symlink() and not directory.exists():
            raise FileNotFoundError(why_missing(directory, "checkpoint directory"))
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(
                f"{directory} is not a checkpoint directory (no config.json); pass a directory "
                f"like results/<profile>/checkpoints/<direction>/<variant>."
            )
        model = MODELS.get(_checkpoint_key(directory), lambda: _load_checkpoint_dir(directory))
        return model, str(directory)
    direction = cfg.evaluation.directions[0].name
    directory = cfg.layout.checkpoint_dir(direction, cfg.main_variant)
    model = MODELS.get(
        _checkpoint_key(directory),
        lambda: model_for_evaluation(cfg, direction, cfg.main_variant, cfg.results_dir),
    )
    return model, str(directory)


def portable_path(path: str | Path, *, results: bool = False) -> str:
    """``path`` for a record that may leave this machine: as given when relative; relative to the
    working directory (or, with ``results``, to the results root's parent: ``results/<profile>/...``)
    when under it; else its name only."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    for base in (Path.cwd(), *([results_root().parent] if results else [])):
        try:
            return str(p.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return p.name


def _model_provenance(model: nn.Module, source: str) -> dict[str, Any]:
    model_cfg = getattr(model, "cfg", None)
    out: dict[str, Any] = {"checkpoint": portable_path(source, results=True)}
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
    image_sha256: str | None = None  # of the image file: tells two images with one stem apart
    # the checkpoint's evaluation settings, the ones used, and how they differ (ProtocolCheck)
    protocol: dict[str, Any] = field(default_factory=dict)

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
            "image": portable_path(self.image_path),
            "image_sha256": self.image_sha256,
            "reference": portable_path(self.reference_path) if self.reference_path else None,
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
            "protocol": self.protocol,
            "provenance": self.provenance,
        }

    def overlay_map(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The anomaly map resized (bilinear) to ``size`` = (height, width), default the input
        image's own size."""
        t = torch.from_numpy(self.anomaly_map)[None, None]
        h, w = size if size is not None else self.image.size[::-1]
        return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear")[0, 0].numpy()

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write into ``out_dir``: ``<stem>_overlay.png``, ``<stem>_dinov2_prompt.png`` (when the
        model has a DINOv2 prompt), ``<stem>_words.png`` (when the word importance was computed)
        and ``<stem>_prediction.json``; returns their paths by kind (replacing earlier ones: ``hxpe
        predict`` calls :func:`check_target` first)."""
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
    reference_rule: str | None = None,
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
        class_name: the part's name in the describer's prompt and, for bases whose prompts
            carry the class name (AdaCLIP), in the model's prompts, as the protocol passes the
            index's class.
        image_size: model input side; default the checkpoint's evaluation size (the protocol's
            ``evaluation.image_size``, stored in its ``config.json``), else its CLIP input size.
        reference_rule: ``first_normal_train`` (use ``reference``) or ``none`` (no reference, as
            the no-reference variants are evaluated); default the checkpoint's own.
        model: an already loaded model (then ``checkpoint`` only labels the provenance).
        words: also compute the word importance of the phrase (leave one word out,
            :func:`hxpe.figures.words.word_importance`; one extra forward per word).
        max_pixels: refuse images with more pixels (:class:`ImageTooLargeError`).
    """
    if description is not None and agent is not None:
        raise ValueError("give either description or agent, not both")
    if image_size is not None:
        check_image_size(image_size, "image_size")
    cfg = load_config(params)
    img = read_input(image, max_pixels)
    if model is None:
        model, source = load_model(cfg, checkpoint)
    else:
        source = str(checkpoint) if checkpoint is not None else "model passed by the caller"
    check = ProtocolCheck.of(
        protocol_settings(source),
        model,
        image_size=image_size,
        reference_rule=reference_rule,
        reference=reference,
        class_name=class_name,
    )
    if check.used["reference_rule"] == "none":
        reference = None
    ref = read_input(reference, max_pixels) if reference is not None else None
    explained = Explained()
    if agent is not None:
        text = describe_image(cfg, agent, img, ref, class_name)
        explained = extract_phrase(cfg, text)
        explained.backends["describe"] = f"{agent}:{cfg.agent.describe.model_id}"
    elif description is not None:
        explained = extract_phrase(cfg, description)
    x, x_ref = model_inputs(img, ref, check.used["image_size"])
    out = _forward(model, x, x_ref, explained.phrase, class_name, check.used["hsf_rng"])
    importance = None
    if words and explained.phrase:
        from hxpe.figures.words import word_importance

        importance = word_importance(model, x, explained.phrase, x_ref)
    provenance = _model_provenance(model, source) | {
        "params": portable_path(params),
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
        image_sha256=file_sha256(Path(image).expanduser()),
        protocol=check.as_dict(),
    )


def check_target(image: str | Path, out_dir: str | Path) -> None:
    """Refuse to let ``image``'s outputs overwrite those of another image with the same stem in
    ``out_dir``: an existing ``<stem>_prediction.json`` must record this very file (same SHA-256)."""
    image, out_dir = Path(image).expanduser(), Path(out_dir).expanduser()
    record = out_dir / f"{image.stem}_prediction.json"
    if not record.exists() or not image.is_file():
        return  # nothing to overwrite, or an image predict() itself refuses with its message
    try:
        old = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        old = None
    if isinstance(old, dict) and old.get("image_sha256") == file_sha256(image):
        return
    held = (
        f"the prediction of another image with the same stem ({old.get('image')})"
        if isinstance(old, dict)
        else "a file this program did not write"
    )
    raise ValueError(
        f"{image}: {record} already holds {held}; pass another --out DIR, or rename the image."
    )


class ImageTooSmallError(ImageReadError):
    """An image with a side under :data:`MIN_SIDE` pixels."""


def read_input(path: str | Path, max_pixels: int | None) -> Image.Image:
    """An image to score (:func:`read_image`), refused when a side is under :data:`MIN_SIDE`."""
    img = read_image(path, max_pixels=max_pixels)
    if min(img.size) < MIN_SIDE:
        w, h = img.size
        raise ImageTooSmallError(
            f"{Path(path).name} is {w}×{h} pixels; a prediction needs at least {MIN_SIDE} pixels on "
            f"each side (a smaller image has no detail to score). Use a larger image."
        )
    return img


def check_image_size(size: int, name: str = "--image-size") -> int:
    """``size`` when it is a sane model input side (:data:`IMAGE_SIZES`), else ValueError naming
    the option ``name``."""
    lo, hi = IMAGE_SIZES
    if not lo <= size <= hi:
        raise ValueError(
            f"{name} {size}: the model input side must be between {lo} and {hi} pixels; leave it "
            f"out to use the checkpoint's own input size."
        )
    return size


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
    class_name: str = "object",
    hsf_rng: str = "per_image",
) -> tuple[float, np.ndarray, np.ndarray | None]:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = image[None].to(device)
    ref = reference[None].to(device) if reference is not None else None
    has_ref = torch.ones(1, dtype=torch.bool, device=device) if ref is not None else None
    model.eval()
    same_rng = getattr(model, "same_rng_per_image", None)
    with same_rng() if same_rng is not None and hsf_rng == "per_image" else nullcontext():
        if isinstance(getattr(model, "cfg", None), ModelConfig):
            out = model(x, [phrase], ref, has_ref, class_names=[class_name])
        else:
            out = model(x, [phrase], ref, has_ref)
    vfm = out.vfm_prompt[0].float().cpu().numpy() if out.vfm_prompt is not None else None
    return float(out.image_score[0]), out.anomaly_map[0].float().cpu().numpy(), vfm


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.image_size is not None:
        check_image_size(args.image_size)
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels {args.max_pixels}: give a positive number of pixels.")
    check_target(args.image, args.out)
    result = predict(
        args.image,
        reference=args.reference,
        checkpoint=args.checkpoint,
        description=args.description,
        agent=args.agent,
        params=args.params,
        class_name=args.class_name,
        image_size=args.image_size,
        reference_rule=args.reference_rule,
        words=args.word_importance,
        max_pixels=args.max_pixels,
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
        help="The part's name in the describer's prompt and, for bases whose prompts carry the "
        "class name (AdaCLIP), in the model's prompts (default: object).",
    )
    p.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help=f"Model input side in pixels, {IMAGE_SIZES[0]} to {IMAGE_SIZES[1]} (default: the "
        "checkpoint's evaluation size, as its protocol scored the test images; the JSON record "
        "says when you differ from it).",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        metavar="N",
        help=f"Refuse larger images (default {MAX_PIXELS:,} pixels, as the app).",
    )
    p.add_argument(
        "--reference-rule",
        choices=["first_normal_train", "none"],
        help="Use --reference (first_normal_train) or no reference (none). Default: the "
        "checkpoint's own rule, as its protocol evaluated it.",
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
        help="Output directory (default predictions/). The outputs of another image with the "
        "same stem there are never overwritten: that is refused with a message.",
    )
    p.set_defaults(func=_cmd_predict)
