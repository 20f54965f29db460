"""Build the frozen backbones: open_clip CLIP and transformers DINOv2, real weights or random init.

Real weights come only from the local Hugging Face cache at the revision pinned in
``hxpe/weights.yaml``; when they are absent the loaders raise :class:`MissingWeightsError` naming the
model id, the revision, the cache looked in and the command that fetches them. Tiny models for tests
are built from JSON configs in ``hxpe/model/configs/`` through the same code path, with random
weights drawn from a fixed seed (so a checkpoint of trainable parameters reproduces a model). The
demo's backbones, trained by the project (:mod:`hxpe.backbones`), load as real weights do: an
open_clip config plus a weights file (``model.clip.pretrained`` a local ``.safetensors``), and
``Dinov2Model.from_pretrained`` on a local folder (``model.vfm.weights_dir``).

Example (the tiny CLIP of the tests and the demo, random weights from seed 0):
    >>> clip, tokenizer = load_clip(ClipConfig(model_name="hxpe-tiny-clip", pretrained=None,
    ...     config_file="hxpe/model/configs/hxpe-tiny-clip.json"), seed=0)
    >>> clip.visual.image_size, clip.text_projection.shape
    ((112, 112), torch.Size([64, 32]))
    >>> tokenizer(["a photo of a damaged object."]).shape
    torch.Size([1, 77])
    >>> any(p.requires_grad for p in clip.parameters())  # frozen
    False
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeGuard

import torch
from torch import nn

from hxpe.model.clip_tower import ClipConfig, ClipTokenizer, OpenClipModule
from hxpe.model.dinov2_prompt import VfmConfig
from hxpe.paths import resolve
from hxpe.weights import (
    WeightSpec,
    clip_weight_key,
    local_snapshot,
    missing_weights_message,
    spec_for_repo,
    weight_spec,
)

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("configs")

# OpenAI's CLIP weights were trained with QuickGELU. open_clip's plain names build nn.GELU and, given
# the weights as a file path, load them without a word: every feature is then subtly wrong.
_QUICKGELU_TAGS = ("openai",)


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not in the local cache (the message says how to fetch them)."""


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def freeze(module: nn.Module) -> nn.Module:
    """Switch off gradients and put the module in eval mode."""
    module.requires_grad_(False)
    return module.eval()


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _pinned_file(spec: WeightSpec) -> Path:
    snap = local_snapshot(spec)
    if snap is None:
        raise MissingWeightsError(missing_weights_message(spec))
    for pattern in spec.weight_patterns:
        hits = sorted(snap.glob(pattern))
        if hits:
            return hits[0]
    raise MissingWeightsError(missing_weights_message(spec))


def unpinned_message(model_name: str, pretrained: str) -> str:
    """Why an open_clip (model, pretrained tag) outside ``hxpe/weights.yaml`` is refused, and how to
    pin it: open_clip would fetch whatever the hub serves today, and a checkpoint's config.json could
    make any command go online."""
    return (
        f"model.clip.pretrained {pretrained!r} for {model_name!r} is not pinned in "
        f"hxpe/weights.yaml, so it is refused (open_clip would download unpinned weights). To pin "
        f"it, add an entry with repo_id, revision, weight_patterns and allow_patterns to "
        f"hxpe/weights.yaml and the pair ({model_name!r}, {pretrained!r}) to CLIP_TAGS in "
        f"hxpe/weights.py, then run make fetch-models; or give the path of a local weights file, "
        f"or set model.clip.pretrained: null for random weights."
    )


def require_quickgelu(model_name: str, pretrained: str | None) -> None:
    """Refuse OpenAI weights on a GELU model: ``("ViT-L-14-336", "openai")`` raises ValueError naming
    ``ViT-L-14-336-quickgelu``; ``-quickgelu`` names, configs with ``quick_gelu: true`` and random
    init pass."""
    if pretrained in _QUICKGELU_TAGS and not _builds_quickgelu(model_name):
        raise ValueError(
            f"model.clip.model_name {model_name!r} with pretrained {pretrained!r}: OpenAI's CLIP "
            f"weights need QuickGELU, but {model_name!r} builds GELU, and loading the weights from a "
            f"file would run them with the wrong activation without any warning. Use "
            f"model_name: {model_name + '-quickgelu'!r}."
        )


def _builds_quickgelu(model_name: str) -> bool:
    """Whether open_clip builds ``model_name`` with QuickGELU (its name or its config says so)."""
    if model_name.endswith("-quickgelu"):
        return True
    import open_clip

    return bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu"))


def load_clip(cfg: ClipConfig, seed: int = 0) -> tuple[OpenClipModule, ClipTokenizer]:
    """The open_clip model (frozen, eval) and its tokenizer.

    ``cfg.config_file`` is registered with ``open_clip.add_model_config`` first. With
    ``pretrained=None`` the weights are random (seeded by ``seed``) and a warning says so.
    """
    import open_clip

    if cfg.config_file:
        path = resolve(cfg.config_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.clip.config_file {path} does not exist; tiny configs live in "
                f"hxpe/model/configs/."
            )
        open_clip.add_model_config(path)
    if cfg.model_name not in open_clip.list_models():
        raise ValueError(
            f"open_clip has no model {cfg.model_name!r}. Set model.clip.config_file to its JSON "
            f"config, or pick one of open_clip.list_models()."
        )
    require_quickgelu(cfg.model_name, cfg.pretrained)
    pretrained: str | None = cfg.pretrained
    key = clip_weight_key(cfg.model_name, cfg.pretrained)
    if key is not None:
        pretrained = str(_pinned_file(weight_spec(key)))
    elif is_weights_file(cfg.pretrained):
        pretrained = str(local_weights(cfg.pretrained, "model.clip.pretrained"))
    elif pretrained is not None and not Path(pretrained).expanduser().is_file():
        raise ValueError(unpinned_message(cfg.model_name, pretrained))  # a tag: not pinned
    with seeded(seed):
        try:
            model = open_clip.create_model(cfg.model_name, pretrained=pretrained)
        except RuntimeError as err:  # open_clip's own download failure
            raise MissingWeightsError(
                f"open_clip could not load {cfg.model_name!r} with pretrained={cfg.pretrained!r}: "
                f"{err}. Fetch the weights on a machine with internet (make fetch-models) or set "
                f"model.clip.pretrained: null for random weights."
            ) from err
    if pretrained is None:
        log.warning(
            "CLIP %s has RANDOM weights (pretrained=None, seed %d): outputs carry no meaning "
            "beyond tests and dry runs.",
            cfg.model_name,
            seed,
        )
    else:
        log.info("CLIP %s loaded from %s", cfg.model_name, pretrained)
    if cfg.activation != "model":
        set_activation(model, cfg.activation)
    return freeze(model), open_clip.get_tokenizer(cfg.model_name)


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def is_weights_file(pretrained: str | None) -> TypeGuard[str]:
    """Whether ``model.clip.pretrained`` names a local weights file (not an open_clip tag)."""
    return pretrained is not None and pretrained.endswith(WEIGHT_SUFFIXES)


def local_weights(path: str, key: str) -> Path:
    """A weights file or folder of the repository (or an absolute path) that must exist."""
    resolved = resolve(path)
    if not resolved.exists():
        raise MissingWeightsError(
            f"{key} {path!r}: {resolved} does not exist. The demo backbones are committed in "
            f"hxpe/model/weights/demo/ (git checkout them, or retrain with `make demo-backbones`)."
        )
    return resolved


def set_activation(clip: nn.Module, kind: str) -> int:
    """Replace the MLP activation of every residual block of both towers (``quick_gelu`` or
    ``gelu``); returns how many were replaced. AdaCLIP as released runs the OpenAI weights with
    ``nn.GELU`` (its model configs lack ``quick_gelu``)."""
    from open_clip.transformer import QuickGELU

    make = {"quick_gelu": QuickGELU, "gelu": nn.GELU}[kind]
    n = 0
    for module in clip.modules():
        mlp = getattr(module, "mlp", None)
        if isinstance(mlp, nn.Sequential) and hasattr(mlp, "gelu"):
            mlp.gelu = make()
            n += 1
    if n == 0:
        raise ValueError(f"No MLP activations found to set to {kind!r} in {type(clip).__name__}.")
    log.info("CLIP MLP activation set to %s in %d blocks", kind, n)
    return n


def dinov2_from_folder(folder: Path | str) -> nn.Module:
    """``Dinov2Model.from_pretrained`` on a local folder (eager attention, no hub access), without
    transformers' "Loading weights" progress bar, which a notebook would save as a widget (the
    previous setting of that bar is restored)."""
    from transformers import Dinov2Model
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model: nn.Module = Dinov2Model.from_pretrained(
            folder, attn_implementation="eager", local_files_only=True
        )
        return model
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_dinov2(cfg: VfmConfig, seed: int = 0) -> nn.Module:
    """DINOv2 (transformers ``Dinov2Model``, eager attention so attentions come back), frozen."""
    from transformers import Dinov2Config, Dinov2Model

    if cfg.config_file:
        path = resolve(cfg.config_file)
        if not path.is_file():
            raise FileNotFoundError(f"model.vfm.config_file {path} does not exist.")
        config = Dinov2Config(**json.loads(path.read_text()))
        config._attn_implementation = "eager"
        with seeded(seed):
            model = Dinov2Model(config)
        log.warning("DINOv2 from %s has RANDOM weights (seed %d).", path.name, seed)
        return freeze(model)
    if cfg.weights_dir:
        folder = local_weights(cfg.weights_dir, "model.vfm.weights_dir")
        model = dinov2_from_folder(folder)
        log.info("DINOv2 loaded from %s", folder)
        return freeze(model)
    spec = spec_for_repo(cfg.model_id)
    if spec is None:
        raise ValueError(
            f"model.vfm.model_id {cfg.model_id!r} is not pinned in hxpe/weights.yaml; add it there "
            f"(repo_id, revision, weight_patterns) or use facebook/dinov2-small."
        )
    snap = local_snapshot(spec)
    if snap is None:
        raise MissingWeightsError(missing_weights_message(spec))
    model = dinov2_from_folder(snap)
    log.info("DINOv2 %s loaded from %s", cfg.model_id, snap)
    return freeze(model)
