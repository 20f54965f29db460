"""Import the authors' checkpoints into the project's checkpoint format (``trainable.safetensors`` +
``config.json`` + ``provenance.json``, :mod:`hxpe.model.checkpoint`).

* AnomalyCLIP (zqhang/AnomalyCLIP@45ed4dd train.py:114): ``torch.save({'prompt_learner': AnomalyCLIP_PromptLearner.state_dict()})``.
* AdaCLIP (caoyunkang/AdaCLIP@e27ee32 method/trainer.py:89-98): ``torch.save({'clip_model.<name>': tensor, ...})`` of its learnable tensors.

Files are read with ``torch.load(weights_only=True)`` only; anything else (pickled objects, other
layouts) is refused with :class:`CheckpointRefused`, a one-line message. Before loading, the sizes
that a ``.pth`` (a zip archive) holds uncompressed are summed and refused beyond
:data:`MAX_UNPACKED_BYTES`, so a small file that deflates to gigabytes is never unpacked; after
loading, prompt shapes are checked against :data:`PROMPT_LIMITS`. Key maps are explicit in
both directions (:func:`our_name`, :func:`authors_name`), so gradients and parameters can be compared
with the authors' by name (``hxpe check-equivalence``).

Example:
    >>> our_name("adaclip", "clip_model.patch_token_layer.head.2.weight")
    'prompter.patch_heads.2.weight'
    >>> authors_name("anomalyclip", "prompter.deep.0")
    'compound_prompts_text.0'
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard

import torch
from safetensors.torch import save_file

from hxpe.atomic import OutputRefused, check_output_dir, replace_dir
from hxpe.config import Config, load_config
from hxpe.hashing import file_sha256
from hxpe.model.checkpoint import (
    CHECKPOINT_OUTPUT,
    CONFIG_FILE,
    PROVENANCE_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
)
from hxpe.model.config import ModelConfig
from hxpe.model.model import HXPEModel
from hxpe.results_layout import ResultsLayout
from hxpe.weights import released_checkpoints

log = logging.getLogger(__name__)

Kind = Literal["anomalyclip", "adaclip"]
KINDS: tuple[Kind, ...] = ("anomalyclip", "adaclip")


def is_kind(name: str) -> TypeGuard[Kind]:
    """Whether ``name`` is a checkpoint format this module imports (:data:`KINDS`)."""
    return name in KINDS


SOURCES = {"anomalyclip": "zqhang/AnomalyCLIP@45ed4dd", "adaclip": "caoyunkang/AdaCLIP@e27ee32"}

# (authors' key pattern, our key pattern); {i} = an index
_RULES: dict[str, list[tuple[str, str]]] = {
    "anomalyclip": [
        ("ctx_pos", "prompter.ctx_normal"),
        ("ctx_neg", "prompter.ctx_abnormal"),
        ("compound_prompts_text.{i}", "prompter.deep.{i}"),
    ],
    "adaclip": [
        ("clip_model.visual_prompter.static_prompts.{i}", "prompter.visual_static.{i}"),
        ("clip_model.text_prompter.static_prompts.{i}", "prompter.text_static.{i}"),
        (
            "clip_model.dynamic_visual_prompt_generator.head.{i}.{p}",
            "prompter.visual_dynamic.{i}.{p}",
        ),
        ("clip_model.dynamic_text_prompt_generator.head.{i}.{p}", "prompter.text_dynamic.{i}.{p}"),
        ("clip_model.patch_token_layer.head.{i}.{p}", "prompter.patch_heads.{i}.{p}"),
        ("clip_model.cls_token_layer.head.0.{p}", "prompter.cls_head.{p}"),
    ],
}
# authors' tensors that hold nothing to learn or that their forward never reads
_IGNORED = {
    "anomalyclip": re.compile(
        r"^(token_prefix_|token_suffix_|tokenized_prompts_|compound_prompt_projections\.)"
    ),
    "adaclip": re.compile(r"^clip_model\.text_prompter\.static_prompts\.0$"),
}


# The authors' files are a few MB (AnomalyCLIP's prompt learner) to ~100 MB (AdaCLIP's heads).
MAX_UNPACKED_BYTES = 1 << 30  # 1 GiB unpacked at most
# Sane prompt shapes: CLIP's text context is 77 tokens, the largest towers have 48 blocks and
# widths of 1664 (ViT-bigG); anything beyond is not a checkpoint of these methods.
PROMPT_LIMITS = {"tokens": 77, "depth": 48, "width": 4096}


class CheckpointRefused(ValueError):
    """The file is not an authors' checkpoint that can be read safely."""


def unpacked_bytes(path: Path) -> int:
    """The bytes ``path`` holds once unpacked: the sum of a zip archive's uncompressed member sizes
    (``torch.save``'s format), or the file's own size (the legacy format is not compressed)."""
    if not zipfile.is_zipfile(path):
        return path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointRefused(f"{path}: refused, not a readable archive ({err}).") from None


def check_prompt_shapes(kind: Kind, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse prompt tensors beyond :data:`PROMPT_LIMITS` (tokens per prompt, width) and more
    prompted blocks than a CLIP tower has."""
    limits = PROMPT_LIMITS
    for name, t in state.items():
        is_prompt = re.search(r"(ctx_normal|ctx_abnormal|deep\.\d+|_static\.\d+)$", name)
        if is_prompt is None:
            continue
        tokens, width = (t.shape[-2], t.shape[-1]) if t.dim() >= 2 else (t.numel(), 1)
        if tokens > limits["tokens"] or width > limits["width"] or t.dim() > 2:
            raise CheckpointRefused(
                f"{path}: {kind} prompt {authors_name(kind, name) or name} has shape "
                f"{tuple(t.shape)}; a prompt holds at most {limits['tokens']} tokens of width at "
                f"most {limits['width']} ([tokens, width]). This is not a {kind} checkpoint."
            )
    for prefix in ("prompter.deep.", "prompter.visual_static.", "prompter.text_static."):
        depth = sum(k.startswith(prefix) for k in state)
        if depth > limits["depth"]:
            raise CheckpointRefused(
                f"{path}: {depth} prompted blocks ({prefix}*); a CLIP tower has at most "
                f"{limits['depth']}. This is not a {kind} checkpoint."
            )


def _pattern(template: str) -> re.Pattern[str]:
    body = (
        re.escape(template)
        .replace(r"\{i\}", r"(?P<i>\d+)")
        .replace(r"\{p\}", r"(?P<p>weight|bias)")
    )
    return re.compile(f"^{body}$")


def _translate(kind: Kind, name: str, forward: bool) -> str | None:
    for theirs, ours in _RULES[kind]:
        src, dst = (theirs, ours) if forward else (ours, theirs)
        m = _pattern(src).match(name)
        if m:
            return dst.format(**m.groupdict())
    return None


def our_name(kind: Kind, authors_key: str) -> str | None:
    """Our parameter name of an authors' key (None: not a parameter we keep)."""
    return _translate(kind, authors_key, forward=True)


def authors_name(kind: Kind, name: str) -> str | None:
    """The authors' key of one of our parameter names."""
    return _translate(kind, name, forward=False)


def to_authors_layout(kind: Kind, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Our tensor reshaped as the authors store it (AnomalyCLIP contexts are [1, 1, n_ctx, C])."""
    if kind == "anomalyclip" and name in ("prompter.ctx_normal", "prompter.ctx_abnormal"):
        return tensor.reshape(1, 1, *tensor.shape)
    return tensor


def read_tensors(path: str | Path, max_bytes: int | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` or :class:`CheckpointRefused` (one line); a file
    that unpacks to more than ``max_bytes`` (default :data:`MAX_UNPACKED_BYTES`) is refused before
    anything is unpacked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointRefused(f"{path}: no such checkpoint file.")
    max_bytes = MAX_UNPACKED_BYTES if max_bytes is None else max_bytes
    size = unpacked_bytes(path)
    if size > max_bytes:
        raise CheckpointRefused(
            f"{path}: refused, it unpacks to {size:,} bytes ({path.stat().st_size:,} on disk); the "
            f"authors' checkpoints unpack to at most {max_bytes:,} bytes. Check that this is the "
            f"released file."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError, EOFError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointRefused(
            f"{path}: refused, not a tensors-only checkpoint (torch.load(weights_only=True): "
            f"{first[:160]})."
        ) from None


def authors_state(kind: Kind, obj: Any, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The authors' flat ``name -> tensor`` dict from a loaded checkpoint object, checked."""
    if kind == "anomalyclip":
        if not isinstance(obj, dict) or "prompt_learner" not in obj:
            raise CheckpointRefused(
                f"{path}: not an AnomalyCLIP checkpoint (expected {{'prompt_learner': state_dict}}, "
                f"train.py:114)."
            )
        obj = obj["prompt_learner"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointRefused(f"{path}: expected a dict of tensors, got {type(obj).__name__}.")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointRefused(f"{path}: entries that are not tensors: {bad[:3]}.")
    if kind == "adaclip" and not all(k.startswith("clip_model.") for k in obj):
        raise CheckpointRefused(
            f"{path}: not an AdaCLIP checkpoint (keys must start with 'clip_model.', "
            f"trainer.py:89-98)."
        )
    return dict(obj)


@dataclass
class Converted:
    """Our state dict, the config overrides its shapes imply, and the authors' keys left out."""

    state: dict[str, torch.Tensor]
    overrides: dict[str, Any]
    ignored: list[str]
    renamed: dict[str, str]


def convert(kind: Kind, state: dict[str, torch.Tensor]) -> Converted:
    """Rename the authors' tensors to ours and infer the prompt shapes from them."""
    ours: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    renamed: dict[str, str] = {}
    for key, value in state.items():
        if _IGNORED[kind].match(key):
            ignored.append(key)
            continue
        name = our_name(kind, key)
        if name is None:
            raise CheckpointRefused(f"unknown {kind} checkpoint key {key!r}; cannot import it.")
        ours[name] = value.detach().float().contiguous()
        renamed[key] = name
    if kind == "anomalyclip":
        for name in ("prompter.ctx_normal", "prompter.ctx_abnormal"):
            if name not in ours:
                raise CheckpointRefused(
                    f"AnomalyCLIP checkpoint without {authors_name(kind, name)}."
                )
            t = ours[name]
            if t.dim() != 4 or t.shape[:2] != (1, 1):
                raise CheckpointRefused(
                    f"AnomalyCLIP {authors_name(kind, name)} has shape {tuple(t.shape)}; expected "
                    f"[1, 1, n_ctx, width] (one class, one state)."
                )
            ours[name] = t[0, 0].contiguous()
        deep = sorted(k for k in ours if k.startswith("prompter.deep."))
        overrides: dict[str, Any] = {
            "anomalyclip": {
                "n_ctx": ours["prompter.ctx_normal"].shape[0],
                "text_prompt_length": ours[deep[0]].shape[0] if deep else 0,
                "text_prompt_depth": len(deep) + 1,
                "text_layout": "overwrite",
            }
        }
    else:
        statics = [k for k in ours if k.startswith("prompter.visual_static.")]
        heads = [k for k in ours if re.match(r"prompter\.patch_heads\.\d+\.weight$", k)]
        first = ours.get("prompter.visual_static.0", ours.get("prompter.text_static.1"))
        # one dynamic head per prompt token: [n, length, C] = the heads' outputs stacked
        dynamic_heads = {
            m.group(1)
            for k in ours
            if (m := re.match(r"prompter\.(?:visual|text)_dynamic\.(\d+)\.weight$", k))
        }
        kinds = [
            t
            for t, p in (("static", "_static."), ("dynamic", "_dynamic."))
            if any(p in k for k in ours)
        ]
        branches = [
            b
            for b, p in (("vision", "prompter.visual_"), ("language", "prompter.text_"))
            if any(k.startswith(p) for k in ours)
        ]
        adaclip: dict[str, Any] = {
            "prompt_types": kinds,
            "branches": branches,
            "patch_head": "raw_tokens",
            "text_layout": "overwrite",
        }
        # Only static prompts reveal the depth (one tensor per block); dynamic-only prompts put the
        # same tokens in every prompted block, so their depth stays the given config's.
        if statics:
            adaclip["prompt_depth"] = len(statics)
        if first is not None:
            adaclip["prompt_length"] = first.shape[0]
        elif dynamic_heads:
            adaclip["prompt_length"] = len(dynamic_heads)
        overrides = {"adaclip": adaclip, "n_layers": len(heads)}
    return Converted(ours, overrides, sorted(ignored), renamed)


def import_checkpoint(
    kind: Kind,
    path: str | Path,
    out_dir: str | Path,
    model_cfg: ModelConfig | None = None,
    *,
    force: bool = False,
) -> Path:
    """Convert the authors' checkpoint ``path`` into our checkpoint directory ``out_dir``.

    ``model_cfg`` gives the rest of the model (CLIP, layers, ...); default: the base's defaults
    with the explainable phrase and the DINOv2 prompts off. Prompt shapes come from the file, except
    the depth of dynamic-only AdaCLIP prompts, which no file records (``model_cfg``'s is kept).
    Written atomically; ``provenance.json`` records the source's SHA-256. An existing ``out_dir``
    must be empty or a previous checkpoint, unless ``force`` (:func:`hxpe.atomic.check_output_dir`).
    """
    path, out_dir = Path(path), Path(out_dir)
    if kind not in KINDS:
        raise CheckpointRefused(f"unknown checkpoint kind {kind!r}; one of {KINDS}.")
    check_output_dir(out_dir, CHECKPOINT_OUTPUT, force=force)
    conv = convert(kind, authors_state(kind, read_tensors(path), path))
    check_prompt_shapes(kind, conv.state, path)
    base = model_cfg or ModelConfig(base=kind)
    data = base.model_dump(mode="json")
    data["base"] = kind
    n_layers = conv.overrides.pop("n_layers", None)
    if n_layers is not None and n_layers != len(data["clip"]["layers"]):
        raise CheckpointRefused(
            f"{path}: {n_layers} patch heads, but model.clip.layers has "
            f"{len(data['clip']['layers'])} entries ({data['clip']['layers']})."
        )
    for section, values in conv.overrides.items():
        data[section] = {**data[section], **values}
    if model_cfg is None:
        data["explain"]["enabled"] = False
        data["vfm"]["enabled"] = False
    cfg = ModelConfig.model_validate(data)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(conv.state, str(tmp / WEIGHTS_FILE), metadata={"format": "hxpe-trainable-v1"})
        config = {"model": cfg.model_dump(mode="json"), "train": {"imported": kind}}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))
        provenance = {
            "imported_from": str(path),
            "source_sha256": file_sha256(path),
            "kind": kind,
            "authors_code": SOURCES[kind],
            "renamed": dict(sorted(conv.renamed.items())),
            "ignored_keys": conv.ignored,
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1, sort_keys=True))
        replace_dir(tmp, out_dir, CHECKPOINT_OUTPUT, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def released_model(cfg: Config, direction: str, variant: str, results_dir: Path) -> HXPEModel:
    """An authors' released checkpoint (``model.checkpoint``, hxpe/weights.yaml) for ``direction``:
    the file trained on the direction's auxiliary dataset, imported once into
    ``checkpoints/<direction>/<variant>`` (re-imported when the file's SHA-256 changes)."""
    model_cfg = cfg.model_for(variant)
    spec = released_checkpoints().get(model_cfg.checkpoint or "")
    if spec is None:
        raise KeyError(
            f"Variant {variant!r}: model.checkpoint {model_cfg.checkpoint!r} is not a released "
            f"checkpoint in hxpe/weights.yaml."
        )
    aux = next(d.train for d in cfg.evaluation.directions if d.name == direction)
    spec.file_for(aux)
    source = spec.path(aux)
    if not source.is_file():
        raise FileNotFoundError(
            f"Variant {variant!r} evaluates {spec.key} trained on {aux}, expected at {source}. "
            f"Fetch it: make fetch-models MODELS={spec.key}"
        )
    target = ResultsLayout.at(results_dir).checkpoint_dir(direction, variant)
    provenance = target / PROVENANCE_FILE
    digest = file_sha256(source)
    if (
        not provenance.is_file()
        or json.loads(provenance.read_text()).get("source_sha256") != digest
    ):
        if not is_kind(spec.format):
            raise ValueError(
                f"{spec.key} in hxpe/weights.yaml has format {spec.format!r}; the importers read "
                f"{list(KINDS)}."
            )
        import_checkpoint(spec.format, source, target, model_cfg)
    return load_checkpoint(target).eval()


def _cmd_import(args: Any) -> int:
    model_cfg = None
    if args.params:
        cfg = load_config(args.params)
        model_cfg = cfg.model_for(args.variant) if args.variant else cfg.model
    try:
        out = import_checkpoint(args.kind, args.path, args.out, model_cfg, force=args.force)
    except (CheckpointRefused, OutputRefused) as err:
        log.error("%s", err)
        return 2
    print(f"Imported {args.kind} checkpoint {args.path} -> {out}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import-checkpoint",
        help="Convert an AnomalyCLIP/AdaCLIP .pth checkpoint into a project checkpoint directory.",
    )
    p.add_argument("kind", choices=KINDS, help="Whose checkpoint format.")
    p.add_argument("path", help="The authors' .pth file (read with torch.load(weights_only=True)).")
    p.add_argument(
        "--out",
        required=True,
        help="Checkpoint directory to write: new, empty, or a previous checkpoint (replaced).",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="Replace --out even when it holds files that are not a checkpoint.",
    )
    p.add_argument(
        "--params", default=None, help="Profile params file whose model settings to use."
    )
    p.add_argument("--variant", default=None, help="Variant of --params (e.g. released_adaclip).")
    p.set_defaults(func=_cmd_import)
