"""Stage 04: train a variant's prompt parameters on the auxiliary dataset (cross-dataset protocol).

The auxiliary index's ``test`` split (with masks) is the training set, as in AnomalyCLIP and AdaCLIP.
Only the prompter's parameters train; CLIP and DINOv2 are checked frozen. The checkpoint directory is
written into a temporary sibling and renamed into place on success, so a crash never leaves a half
checkpoint.

Example:
    >>> ckpt = train(cfg, load_index(aux_dir), phrases, out_dir, "hxpe")  # doctest: +SKIP
    >>> model = load_checkpoint(ckpt)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hxpe.atomic import replace_dir
from hxpe.config import Config
from hxpe.data.index import DatasetIndex, select_references
from hxpe.data.torch_dataset import IndexDataset, phrases_from_batch
from hxpe.model.checkpoint import load_checkpoint, save_checkpoint
from hxpe.model.config import ModelConfig, TrainConfig
from hxpe.model.hxpe import HXPEModel, build_model
from hxpe.model.inference import model_device
from hxpe.model.losses import hxpe_loss
from hxpe.provenance import git_state, package_versions, utc_now
from hxpe.seeding import generator, seed_everything, worker_init_fn

log = logging.getLogger(__name__)
BASE_BATCH_SIZE = {"adaclip": 1, "anomalyclip": 8}
LOSS_COLUMNS = ("epoch", "step", "total", "focal", "dice", "image")


def trainable_variants(cfg: Config) -> list[str]:
    """The variants of the profile that have parameters to train (all but WinCLIP-style ones)."""
    return [v for v in cfg.variants if cfg.model_for(v).trains]


def batch_size_for(train_cfg: TrainConfig, model_cfg: ModelConfig) -> int:
    """``train.batch_size``, or the base's own (AdaCLIP 1, AnomalyCLIP 8)."""
    return train_cfg.batch_size or BASE_BATCH_SIZE[model_cfg.base]


def make_optimizer(
    params: list[torch.nn.Parameter], train_cfg: TrainConfig, model_cfg: ModelConfig
) -> torch.optim.Optimizer:
    """The base's optimiser by default: AdaCLIP AdamW, AnomalyCLIP Adam, both β = (0.5, 0.999)."""
    name = train_cfg.optimizer
    if name == "base":
        name = "adamw" if model_cfg.base == "adaclip" else "adam"
    if name == "sgd":
        return torch.optim.SGD(params, lr=train_cfg.lr, momentum=0.9)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, lr=train_cfg.lr, betas=tuple(train_cfg.betas))


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
    dataset = IndexDataset(index, model_cfg.clip.image_size, cfg.train.split, phrases, references)
    if len(dataset) == 0:
        raise ValueError(
            f"Index {index.name} has no {cfg.train.split!r} images to train on; check the index "
            f"(stage 01) or train.split."
        )
    return DataLoader(
        dataset,
        batch_size=batch_size_for(cfg.train, model_cfg),
        shuffle=True,
        generator=generator(cfg.seed),
        num_workers=cfg.train.num_workers,
        worker_init_fn=worker_init_fn,
    )


def _step(model: HXPEModel, batch: dict, train_cfg: TrainConfig) -> dict[str, torch.Tensor]:
    device = model_device(model)
    refs = batch.get("reference")
    out = model(
        batch["image"].to(device),
        phrases_from_batch(batch),
        references=None if refs is None else refs.to(device),
        has_reference=batch.get("has_reference"),
    )
    return hxpe_loss(
        out,
        batch["mask"].to(device),
        batch["label"].to(device),
        train_cfg.loss_weights,
        train_cfg.focal_gamma,
    )


def _write_loss(rows: list[dict[str, Any]], directory: Path, title: str) -> None:
    with open(directory / "loss.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOSS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    steps = list(range(1, len(rows) + 1))
    for key in ("total", "focal", "dice", "image"):
        ax.plot(steps, [r[key] for r in rows], label=key, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / "loss.png", dpi=120)
    plt.close(fig)


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
        references: class -> normal reference image_id; None = ``select_references`` with
            ``data.reference_rule`` when the variant uses the DINOv2 prompts.

    Returns:
        ``out_dir``, holding ``trainable.safetensors``, ``config.json``, ``provenance.json``,
        ``loss.csv`` and ``loss.png``.
    """
    out_dir = Path(out_dir)
    model_cfg = cfg.model_for(variant)
    if not model_cfg.trains:
        raise ValueError(f"Variant {variant!r} (base {model_cfg.base}) has nothing to train.")
    seed_everything(cfg.seed, cfg.deterministic)
    model = build_model(model_cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    check_frozen(model)
    if references is None and model_cfg.vfm.enabled:
        references = select_references(index, cfg.data.reference_rule)
    loader = _loader(cfg, model_cfg, index, phrases, references)
    params = list(model.trainable_state().values())
    optimizer = make_optimizer(params, cfg.train, model_cfg)
    rows: list[dict[str, Any]] = []
    started = utc_now()
    t0 = time.perf_counter()
    step = 0
    for epoch in range(1, cfg.train.epochs + 1):
        bar = tqdm(loader, desc=f"{variant} epoch {epoch}/{cfg.train.epochs}", leave=False)
        for batch in bar:
            losses = _step(model, batch, cfg.train)
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
    model.eval()
    settings = cfg.train.model_dump(mode="json") | {
        "batch_size_resolved": batch_size_for(cfg.train, model_cfg),
        "variant": variant,
        "train_index": index.name,
        "seed": cfg.seed,
        "steps": step,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_checkpoint(model, tmp, settings)
        _write_loss(rows, tmp, f"{variant} on {index.name}")
        provenance = {
            "git": git_state(),
            "versions": package_versions(),
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
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "Trained %s: %d steps, final loss %.4f -> %s", variant, step, rows[-1]["total"], out_dir
    )
    return out_dir


def checkpoint_dir(results_dir: Path, direction: str, variant: str) -> Path:
    """``results_dir/checkpoints/<direction>/<variant>``."""
    return Path(results_dir) / "checkpoints" / direction / variant


def model_for_evaluation(cfg: Config, direction: str, variant: str, results_dir: Path) -> HXPEModel:
    """The model of ``variant`` for ``direction``: its checkpoint when it trains, built otherwise."""
    model_cfg = cfg.model_for(variant)
    if not model_cfg.trains:
        return build_model(model_cfg).eval()
    ckpt = checkpoint_dir(results_dir, direction, variant)
    if not (ckpt / "trainable.safetensors").is_file():
        raise FileNotFoundError(
            f"No checkpoint for variant {variant!r}, direction {direction!r} in {ckpt}. Run stage "
            f"04 first (make train PROFILE={cfg.profile})."
        )
    model = load_checkpoint(ckpt)
    if model.cfg != model_cfg:
        log.warning(
            "Checkpoint %s was trained with a model config that differs from the profile's "
            "variant %r; using the checkpoint's.",
            ckpt,
            variant,
        )
    return model.eval()


def train_all(
    cfg: Config,
    phrases: dict[str, str | None],
    *,
    results_dir: Path | None = None,
    variants: list[str] | None = None,
) -> dict[tuple[str, str], Path]:
    """Stage 04: train every trainable variant for every direction of the profile.

    Each direction trains on its auxiliary dataset's index (``index/<direction.train>``) with that
    dataset's normal references; returns ``{(direction, variant): checkpoint_dir}``.
    """
    from hxpe.data.index import load_index

    rd = results_dir or cfg.results_dir
    out: dict[tuple[str, str], Path] = {}
    for direction in cfg.evaluation.directions:
        aux = load_index(rd / "index" / direction.train)
        references = select_references(aux, cfg.data.reference_rule)
        for variant in variants or trainable_variants(cfg):
            target = checkpoint_dir(rd, direction.name, variant)
            out[(direction.name, variant)] = train(
                cfg, aux, phrases, target, variant, references=references
            )
    return out
