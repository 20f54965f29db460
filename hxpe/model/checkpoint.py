"""Checkpoints without pickle: ``trainable.safetensors`` (trainable parameters only) +
``config.json`` (the resolved model and training settings) + ``provenance.json``; the loss history
(``loss.csv``, ``loss.png``) is written beside them by the trainer.

Checkpoints live in ``results/<profile>/checkpoints/<direction>/<variant>/``
(:meth:`hxpe.results_layout.ResultsLayout.checkpoint_dir`);
:func:`hxpe.model.inference.model_for_evaluation` resolves a profile's variant to its model for
evaluation, prediction and figures.

Example (a round trip of the tiny model; stage 04 writes into
``results/<profile>/checkpoints/<direction>/<variant>/``):
    >>> import torch
    >>> out = tmp_path / "hxpe"
    >>> out.mkdir()
    >>> save_checkpoint(tiny_model, out, {"note": "untrained"})
    >>> sorted(p.name for p in out.iterdir())
    ['config.json', 'trainable.safetensors']
    >>> model = load_checkpoint(out)
    >>> model.cfg == tiny_model.cfg
    True
    >>> saved = model.trainable_state()
    >>> all(torch.equal(v, saved[k]) for k, v in tiny_model.trainable_state().items())
    True
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from hxpe.atomic import OutputKind
from hxpe.model.config import ModelConfig
from hxpe.model.model import HXPEModel, assemble

log = logging.getLogger(__name__)
WEIGHTS_FILE = "trainable.safetensors"
CONFIG_FILE = "config.json"
PROVENANCE_FILE = "provenance.json"
CHECKPOINT_FILES = (WEIGHTS_FILE, CONFIG_FILE, PROVENANCE_FILE, "loss.csv", "loss.png")
# What every checkpoint folder holds (trained, shared or imported): a folder an output option may replace.
CHECKPOINT_OUTPUT = OutputKind("checkpoint", (WEIGHTS_FILE, CONFIG_FILE))


def save_checkpoint(
    model: HXPEModel,
    out_dir: Path,
    train_settings: dict[str, Any],
    evaluation: dict[str, Any] | None = None,
) -> None:
    """Write the trainable parameters and ``config.json`` into ``out_dir`` (which must exist).

    ``evaluation``: the protocol settings the checkpoint is evaluated with (``image_size``,
    ``reference_rule``, ``hsf_rng``; :func:`hxpe.train.evaluation_settings`), which ``hxpe
    predict`` and the app take as their defaults.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "hxpe-trainable-v1"})
    config = {"model": model.cfg.model_dump(mode="json"), "train": train_settings}
    if evaluation is not None:
        config["evaluation"] = evaluation
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (the message names the file and what to do)."""


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint: a JSON object with a ``model`` object, else CheckpointError."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint in {directory}: {CONFIG_FILE} is missing. Train it first "
            f"(stage 04: make train PROFILE=<profile>)."
        )
    fix = "retrain or re-import the checkpoint, or pick another one"
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); {fix}.") from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(config).__name__}, not an object with a 'model' section; "
            f"{fix}."
        )
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(
            f"{path} has no 'model' object (its keys: {sorted(config)[:8]}); it was not written "
            f"by this code's trainer or importer: {fix}."
        )
    return config


def read_weights(path: Path) -> dict[str, Any]:
    """The tensors of ``trainable.safetensors``; a truncated or corrupt file is a CheckpointError."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path} cannot be read ({err}); the file is truncated or corrupt ({path.stat().st_size:,} "
            f"bytes). Copy it again, or retrain or re-import the checkpoint."
        ) from None


def load_checkpoint(directory: str | Path, device: str | None = None) -> HXPEModel:
    """Rebuild the model from ``config.json`` and load ``trainable.safetensors`` (strict); a
    checkpoint holds a prompted base's trained parameters (a training-free base has none)."""
    directory = Path(directory)
    cfg = ModelConfig.model_validate(read_checkpoint_config(directory)["model"])
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"Checkpoint {directory} has no {WEIGHTS_FILE}; retrain it.")
    state = read_weights(weights)
    model = assemble(cfg)
    params = model.trainable_state()
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint {directory} does not match its model config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}. It was written by different code; retrain it."
        )
    for name, param in params.items():
        if param.shape != state[name].shape:
            raise ValueError(
                f"Checkpoint {directory}: {name} has shape {tuple(state[name].shape)}, the model "
                f"expects {tuple(param.shape)}; retrain it."
            )
        param.data.copy_(state[name])
    log.info("Loaded checkpoint %s (%d tensors)", directory, len(state))
    return model.to(device) if device else model
