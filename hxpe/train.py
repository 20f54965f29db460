"""Stage 04: train a variant's prompt parameters on the auxiliary dataset (cross-dataset protocol).

The auxiliary index's ``test`` split (with masks) is the training set, as in AnomalyCLIP and AdaCLIP.
Only the prompter's parameters train; CLIP and DINOv2 are checked frozen. The checkpoint directory is
written into a temporary sibling and renamed into place on success, so a crash never leaves a half
checkpoint.

Variants that would train identical parameters (same :func:`training_signature`, e.g. two that differ
only in a test-time setting such as ``vfm.mode: reweight``) are trained once; the others get a copy
of that checkpoint with their own ``config.json`` (:func:`share_checkpoint`).

Example (the shrunk demo profile: one step on the auxiliary dataset's test split):
    >>> from hxpe.agent import phrases_for_rule
    >>> from hxpe.data.index import load_index
    >>> aux = load_index(cfg.layout.index_dir("demo_aux"))
    >>> phrases = phrases_for_rule(cfg.results_dir, "first_normal_train")
    >>> ckpt = train(cfg, aux, phrases, tmp_path / "hxpe", "hxpe")
    >>> sorted(p.name for p in ckpt.iterdir())
    ['config.json', 'loss.csv', 'loss.png', 'provenance.json', 'trainable.safetensors']
    >>> ckpt.joinpath("loss.csv").read_text().splitlines()[0]  # one row per step
    'epoch,step,total,focal,dice,image'
    >>> from hxpe.model.checkpoint import load_checkpoint
    >>> model = load_checkpoint(ckpt)
    >>> model.cfg == cfg.model_for("hxpe")
    True
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from hxpe.atomic import check_output_dir, replace_dir
from hxpe.config import Config
from hxpe.data.index import DatasetIndex, select_references
from hxpe.data.mosaic import Mosaic
from hxpe.data.torch_dataset import IndexDataset, phrases_from_batch
from hxpe.model.checkpoint import (
    CHECKPOINT_FILES,
    CHECKPOINT_OUTPUT,
    CONFIG_FILE,
    PROVENANCE_FILE,
    read_checkpoint_config,
    save_checkpoint,
)
from hxpe.model.config import ModelConfig, TrainConfig, training_recipe
from hxpe.model.loading import model_device
from hxpe.model.losses import LossSpec, hxpe_loss
from hxpe.model.model import HXPEModel, build_model
from hxpe.model.recipes import recipe
from hxpe.progress import progress
from hxpe.provenance import git_state, utc_now
from hxpe.results_layout import ResultsLayout
from hxpe.seeding import generator, seed_everything, worker_init_fn
from hxpe.versions import software_versions

log = logging.getLogger(__name__)
LOSS_COLUMNS = ("epoch", "step", "total", "focal", "dice", "image")


def trainable_variants(cfg: Config) -> list[str]:
    """The variants of the profile that have parameters to train (all but WinCLIP-style ones)."""
    return [v for v in cfg.variants if cfg.model_for(v).trains]


def training_signature(cfg: Config, variant: str) -> str:
    """A hash of everything that shapes ``variant``'s trained parameters, and nothing else.

    Left out, because the losses never see them: ``sigma`` (smoothing of the output map), the DINOv2
    section unless its prompt map enters CLIP's attention (``vfm.mode: reweight`` acts after the
    losses, so it trains exactly like ``vfm.enabled: false``), ``vfm.alpha`` (re-weighting only),
    and the explain section when it is disabled. The reference rule counts where it reaches
    training: through the phrases (explain on) and through the DINOv2 prompts (attn_bias).
    """
    m = cfg.model_for(variant)
    model = m.model_dump(mode="json")
    model.pop("sigma")
    model["reference_rule"] = None
    if m.vfm.trains_through:
        model["vfm"].pop("alpha")
    else:
        model["vfm"] = None
    if not m.explain.enabled:
        model["explain"] = None
    rule = cfg.reference_rule_for(variant)
    payload = {
        "model": model,
        "train": cfg.train.model_dump(mode="json"),
        "training": training_recipe(cfg.train, m).as_dict(),
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "phrases_rule": rule if m.explain.enabled else None,
        "references_rule": rule if m.vfm.trains_through else None,
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_groups(cfg: Config, variants: list[str] | None = None) -> dict[str, list[str]]:
    """``{signature: [variant, ...]}`` over the trainable ``variants`` (profile order); the first
    variant of each group is trained, the others share its checkpoint."""
    groups: dict[str, list[str]] = {}
    for variant in variants or trainable_variants(cfg):
        groups.setdefault(training_signature(cfg, variant), []).append(variant)
    return groups


def evaluation_settings(cfg: Config, variant: str) -> dict[str, Any]:
    """The protocol settings ``variant`` is evaluated with, stored in its checkpoint's
    ``config.json`` (``evaluation``) so that ``hxpe predict`` and the app default to them."""
    return {
        "image_size": cfg.evaluation.image_size,
        "reference_rule": cfg.reference_rule_for(variant),
        "hsf_rng": cfg.evaluation.hsf_rng,
        "profile": cfg.profile,
    }


def batch_size_for(train_cfg: TrainConfig, model_cfg: ModelConfig) -> int:
    """The training batch size: ``train.batch_size``, else the recipe's (else the base's own)."""
    return training_recipe(train_cfg, model_cfg).batch_size


def make_optimizer(
    params: list[torch.nn.Parameter], train_cfg: TrainConfig, model_cfg: ModelConfig
) -> torch.optim.Optimizer:
    """The recipe's optimiser (AdaCLIP AdamW, AnomalyCLIP Adam, both β = (0.5, 0.999)) unless
    ``train`` names another."""
    t = training_recipe(train_cfg, model_cfg)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, betas=t.betas)


def check_frozen(model: HXPEModel) -> None:
    """Raise unless every backbone parameter is frozen and something trains."""
    leaking = [n for m in model.backbones() for n, p in m.named_parameters() if p.requires_grad]
    if leaking:
        raise RuntimeError(f"Backbone parameters would train: {leaking[:5]}; they must be frozen.")
    if not model.trainable_state():
        raise RuntimeError(
            f"Base {model.cfg.base!r} has no trainable parameters; nothing to train."
        )


def _loader(
    cfg: Config,
    model_cfg: ModelConfig,
    index: DatasetIndex,
    phrases: dict[str, str | None],
    references: dict[str, str | None] | None,
) -> DataLoader:
    training = training_recipe(cfg.train, model_cfg)
    rate = recipe(training.recipe).mosaic_rate(index.kind, training.mosaic_rates)
    dataset = IndexDataset(
        index,
        model_cfg.clip.image_size,
        cfg.train.split,
        phrases,
        references,
        mosaic=Mosaic(rate, cfg.seed) if rate > 0 else None,
    )
    if len(dataset) == 0:
        raise ValueError(
            f"Index {index.name} has no {cfg.train.split!r} images to train on; check the index "
            f"(stage 01) or train.split."
        )
    return DataLoader(
        dataset,
        batch_size=training.batch_size,
        shuffle=True,
        generator=generator(cfg.seed),
        num_workers=cfg.train.num_workers,
        worker_init_fn=worker_init_fn,
    )


def step_losses(
    model: HXPEModel, batch: dict, spec: LossSpec, *, trim_text: bool = True
) -> dict[str, torch.Tensor]:
    """Forward one batch (moved to the model's device) and return its losses (``total`` and parts)
    under the base's loss ``spec`` (:meth:`LossSpec.resolve`). ``trim_text=False`` runs the text
    tower over the full 77-token context (the anchors' naive path, for the benchmark)."""
    device = model_device(model)
    refs = batch.get("reference")
    cls = batch.get("cls")
    out = model(
        batch["image"].to(device),
        phrases_from_batch(batch),
        references=None if refs is None else refs.to(device),
        has_reference=batch.get("has_reference"),
        class_names=None if cls is None else [str(c) for c in cls],
        trim_text=trim_text,
    )
    return hxpe_loss(out, batch["mask"].to(device), batch["label"].to(device), spec)


def _write_loss(rows: list[dict[str, Any]], directory: Path, title: str) -> None:
    with open(directory / "loss.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOSS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    # A Figure object of its own (no pyplot, no backend switch): a notebook's inline figures stay
    # inline, and nothing is shown or kept open.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    steps = list(range(1, len(rows) + 1))
    for key in ("total", "focal", "dice", "image"):
        ax.plot(steps, [r[key] for r in rows], label=key, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / "loss.png", dpi=120)


def train(
    cfg: Config,
    index: DatasetIndex,
    phrases: dict[str, str | None],
    out_dir: Path,
    variant: str,
    *,
    references: dict[str, str | None] | None = None,
) -> Path:
    """Train ``variant`` on ``index``'s ``train.split`` and write its checkpoint to ``out_dir``.

    Args:
        phrases: image_id -> gated explainable phrase (None = no phrase).
        references: class -> normal reference image_id; None = ``select_references`` with the
            variant's reference rule (``Config.reference_rule_for``) when it uses DINOv2 prompts.

    Returns:
        ``out_dir``, holding ``trainable.safetensors``, ``config.json``, ``provenance.json``,
        ``loss.csv`` and ``loss.png``.
    """
    out_dir = Path(out_dir)
    model_cfg = cfg.model_for(variant)
    if not model_cfg.trains:
        raise ValueError(f"Variant {variant!r} (base {model_cfg.base}) has nothing to train.")
    check_output_dir(out_dir, CHECKPOINT_OUTPUT, option="checkpoint folder")
    seed_everything(cfg.seed, cfg.deterministic)
    model = build_model(model_cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    check_frozen(model)
    if references is None and model_cfg.vfm.enabled:
        references = select_references(index, cfg.reference_rule_for(variant))
    loader = _loader(cfg, model_cfg, index, phrases, references)
    params = list(model.trainable_state().values())
    training = training_recipe(cfg.train, model_cfg)
    optimizer = make_optimizer(params, cfg.train, model_cfg)
    loss_spec = LossSpec.resolve(model_cfg, cfg.train)
    rows: list[dict[str, Any]] = []
    started = utc_now()
    t0 = time.perf_counter()
    step = 0
    for epoch in range(1, training.epochs + 1):
        bar = progress(loader, desc=f"{variant} epoch {epoch}/{training.epochs}", leave=False)
        for batch in bar:
            losses = step_losses(model, batch, loss_spec)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            step += 1
            rows.append(
                {"epoch": epoch, "step": step, **{k: float(v.detach()) for k, v in losses.items()}}
            )
            bar.set_postfix(loss=f"{rows[-1]['total']:.4f}")
            if cfg.train.max_steps and step >= cfg.train.max_steps:
                break
        if cfg.train.max_steps and step >= cfg.train.max_steps:
            break
    if step == 0:
        raise RuntimeError(
            f"Training {variant} on {index.name} took no step (train.epochs: "
            f"{cfg.train.epochs}, {len(loader)} batches per epoch), so no checkpoint was written "
            f"and {out_dir} was left as it was; set train.epochs >= 1."
        )
    model.eval()
    settings = cfg.train.model_dump(mode="json") | {
        "recipe": training.as_dict(),
        "batch_size_resolved": training.batch_size,
        "mosaic_rate": loader.dataset.mosaic.rate if loader.dataset.mosaic else 0.0,
        "variant": variant,
        "train_index": index.name,
        "seed": cfg.seed,
        "steps": step,
        "training_signature": training_signature(cfg, variant),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_checkpoint(model, tmp, settings, evaluation_settings(cfg, variant))
        _write_loss(rows, tmp, f"{variant} on {index.name}")
        provenance = {
            "git": git_state(),
            "versions": software_versions(),
            "seed": cfg.seed,
            "deterministic": cfg.deterministic,
            "device": device,
            "started": started,
            "finished": utc_now(),
            "seconds": round(time.perf_counter() - t0, 2),
            "variant": variant,
            "train_index": index.name,
            "n_images": len(loader.dataset),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1))
        replace_dir(tmp, out_dir, CHECKPOINT_OUTPUT)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "Trained %s: %d steps, final loss %.4f -> %s", variant, step, rows[-1]["total"], out_dir
    )
    return out_dir


def share_checkpoint(source: Path, target: Path, cfg: Config, variant: str) -> Path:
    """Give ``variant`` the parameters trained in ``source`` (same :func:`training_signature`):
    the weights and loss history are copied, ``config.json`` holds ``variant``'s own model config
    and names the variant that trained it. Written atomically like :func:`train`."""
    source, target = Path(source), Path(target)
    config = read_checkpoint_config(source)
    signature = training_signature(cfg, variant)
    if config["train"].get("training_signature") != signature:
        raise ValueError(
            f"Cannot share {source} with variant {variant!r}: it was trained with signature "
            f"{config['train'].get('training_signature')!r}, the variant needs {signature!r}."
        )
    config["model"] = cfg.model_for(variant).model_dump(mode="json")
    config["evaluation"] = evaluation_settings(cfg, variant)
    config["train"] = config["train"] | {
        "variant": variant,
        "trained_as": config["train"]["variant"],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in CHECKPOINT_FILES:
            if name != CONFIG_FILE and (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))
        replace_dir(tmp, target, CHECKPOINT_OUTPUT)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Variant %s shares the checkpoint trained as %s -> %s", variant, source.name, target)
    return target


def train_all(
    cfg: Config,
    phrases: dict[str, str | None] | None = None,
    *,
    results_dir: Path | None = None,
    variants: list[str] | None = None,
) -> dict[tuple[str, str], Path]:
    """Stage 04: train every trainable variant for every direction of the profile.

    Each direction trains on its auxiliary dataset's index (``index/<direction.train>``) with that
    dataset's normal references (the variant's reference rule). Variants with the same
    :func:`training_signature` train once and share the checkpoint. ``phrases`` (image_id ->
    gated phrase) serve every variant; None reads each variant's from stage 03
    (:func:`hxpe.agent.phrases_for_rule`). Returns ``{(direction, variant): checkpoint_dir}``.
    """
    from hxpe.agent import phrases_for_rule
    from hxpe.data.index import load_index

    layout = ResultsLayout.at(results_dir) if results_dir is not None else cfg.layout
    groups = training_groups(cfg, variants)
    out: dict[tuple[str, str], Path] = {}
    for direction in cfg.evaluation.directions:
        aux = load_index(layout.index_dir(direction.train))
        for members in groups.values():
            first = members[0]
            rule = cfg.reference_rule_for(first)
            target = layout.checkpoint_dir(direction.name, first)
            out[(direction.name, first)] = train(
                cfg,
                aux,
                phrases if phrases is not None else phrases_for_rule(layout.root, rule),
                target,
                first,
                references=select_references(aux, rule),
            )
            for other in members[1:]:
                out[(direction.name, other)] = share_checkpoint(
                    target, layout.checkpoint_dir(direction.name, other), cfg, other
                )
    return out
