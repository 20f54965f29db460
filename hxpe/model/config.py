"""Settings of the model (stage 04/05) and of training (stage 04), and the training values a variant
runs with.

Every choice the paper leaves open is a named key; ``hxpe/LEDGER.md`` maps each to its source ([S]
stated by a source, [B] stated by the paper, [I] our inference). Class defaults are the paper
profile's values. Each section is defined beside what it configures: ``clip``
(:class:`hxpe.model.clip_tower.ClipConfig`), ``explain`` (:class:`hxpe.model.explainable.ExplainConfig`),
``vfm`` (:class:`hxpe.model.dinov2_prompt.VfmConfig`) and one section per base in its own module of
:mod:`hxpe.model.bases`; ``base`` must name a registered base.

Example:
    >>> cfg = ModelConfig(base="anomalyclip")
    >>> cfg.anomalyclip.n_ctx, cfg.clip.layers
    (12, [6, 12, 18, 24])
    >>> ModelConfig(base="clipx")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
    base
      Value error, model.base 'clipx' is not a registered base; registered: ['adaclip', ...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hxpe.limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_WORKERS
from hxpe.model.bases import base as registry
from hxpe.model.bases.adaclip import AdaClipConfig
from hxpe.model.bases.anomalyclip import AnomalyClipConfig
from hxpe.model.bases.base import BaseArithmetic
from hxpe.model.bases.winclip import WinClipConfig
from hxpe.model.clip_tower import ClipConfig
from hxpe.model.dinov2_prompt import VfmConfig
from hxpe.model.explainable import ExplainConfig
from hxpe.model.recipes import recipe, recipe_layers


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    clip: ClipConfig = Field(default_factory=ClipConfig)
    base: str = Field("adaclip", description="The CLIP base: a registered base (hxpe.model.bases).")
    adaclip: AdaClipConfig = Field(default_factory=AdaClipConfig)
    anomalyclip: AnomalyClipConfig = Field(default_factory=AnomalyClipConfig)
    winclip: WinClipConfig = Field(default_factory=WinClipConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    vfm: VfmConfig = Field(default_factory=VfmConfig)
    reference_rule: Literal["first_normal_train", "none"] | None = Field(
        None,
        description="Normal reference of this variant's VLM descriptions and DINOv2 prompts "
        "('none': no reference, the ablation row hxpe_noref; hxpe/LEDGER.md); null = "
        "data.reference_rule.",
    )
    object_name: str = Field(
        "object", description="Generic object word ({obj}) of bases with object_word: generic."
    )
    recipe: str = Field(
        "hxpe",
        description="Training and testing recipe (hxpe.model.recipes, registered beside the bases): 'hxpe' (the paper's, HXPE "
        "rows), 'adaclip' / 'anomalyclip' (the authors' released scripts, baseline rows), "
        "'anomalyclip_paper' (AnomalyCLIP with the paper's four layers). Sets the feature layers "
        "(model.clip.layers, or only the deepest) and train.* values not set explicitly.",
    )
    checkpoint: str | None = Field(
        None,
        description="An imported authors' checkpoint (hxpe/weights.yaml key, e.g. "
        "released_adaclip): evaluated as is, never trained.",
    )
    score_mode: Literal["base", "text", "text_max"] = Field(
        "base", description="Image score: the base's own, text only, or (text + max map)/2."
    )
    sigma: float = Field(
        4.0, ge=0.0, le=256.0, description="Gaussian σ (pixels) on the output map; 0 = none."
    )
    random_init_seed: int = Field(
        0, description="Seed of randomly initialised frozen weights (tiny models, dry runs)."
    )

    @field_validator("base")
    @classmethod
    def _registered(cls, base: str) -> str:
        if base not in registry.available_bases():
            raise ValueError(
                f"model.base {base!r} is not a registered base; registered: "
                f"{registry.available_bases()}."
            )
        return base

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if not self.clip.layers or min(self.clip.layers) < 1:
            raise ValueError(
                f"model.clip.layers must be 1-based block numbers; got {self.clip.layers}"
            )
        try:
            chosen = recipe(self.recipe)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        # the recipe's layers (idempotent: a checkpoint's stored layers resolve to themselves)
        self.clip.layers = recipe_layers(chosen, self.clip.layers)
        return self

    @property
    def trains(self) -> bool:
        """Whether this configuration has trainable parameters (winclip does not)."""
        return registry.base_class(self.base).trains and self.checkpoint is None

    @property
    def arithmetic(self) -> BaseArithmetic:
        """The base's section as the arithmetic every base declares (``self.<base>``)."""
        return registry.own_section(self, self.base, BaseArithmetic)


class TrainConfig(_Section):
    """Training settings. Every value left ``null`` is the variant's recipe's
    (``model.recipe``, :mod:`hxpe.model.recipes`); a value set here overrides every recipe of
    the profile (the demo scales epochs and batch size down this way) and the checkpoint records
    it (``config.json`` ``train.overrides``)."""

    epochs: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs over the auxiliary test split; null = recipe's.",
    )
    lr: float | None = Field(
        None, gt=0.0, le=10.0, description="Learning rate; null = the recipe's."
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="null = the recipe's (adaclip 1, anomalyclip 8; hxpe: the base's own).",
    )
    optimizer: Literal["base", "adam", "adamw", "sgd"] | None = Field(
        None,
        description="null = the recipe's (adaclip AdamW, anomalyclip Adam; hxpe: the base's "
        "own); 'base' = the base's own (model.<base>.optimizer).",
    )
    betas: tuple[float, float] | None = Field(None, description="Adam betas; null = recipe's.")
    weight_decay: float | None = Field(
        None, description="AdamW weight decay; null = the recipe's (torch's default 0.01)."
    )
    mosaic_rates: dict[str, float] | None = Field(
        None,
        description="AdaCLIP's 2x2 mosaic rate per training dataset kind, replacing the "
        "recipe's table for recipes that have a mosaic (adaclip: mvtec 0.2, others 0); null = "
        "the recipe's.",
    )
    split: str = Field("test", description="Training split of the auxiliary index (protocol).")
    focal_gamma: float = Field(2.0, ge=0.0)
    focal_smooth: float = Field(
        1e-5, ge=0.0, lt=1.0, description="Focal label smoothing (both authors' loss.py)."
    )
    loss_weights: dict[Literal["focal", "dice", "image"], float] | None = Field(
        None, description="None = the base's own (anomalyclip λ = 4 on the maps, adaclip 1)."
    )
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS)
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (smoke runs)."
    )


@dataclass(frozen=True)
class Training:
    """The training values a variant runs with: its recipe's, where the profile's ``train``
    section sets none (``overrides`` lists those it sets, with the recipe's value they replace)."""

    recipe: str
    epochs: int
    lr: float
    batch_size: int
    optimizer: str
    betas: tuple[float, float]
    weight_decay: float
    mosaic_rates: dict[str, float]
    overrides: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"betas": list(self.betas)}


def training_recipe(train_cfg: TrainConfig, model_cfg: ModelConfig) -> Training:
    """Resolve ``model_cfg.recipe`` (:mod:`hxpe.model.recipes`) under ``train_cfg``'s explicit values."""
    r = recipe(model_cfg.recipe)
    base = model_cfg.arithmetic
    from_recipe: dict[str, Any] = {
        "epochs": r.epochs,
        "lr": r.lr,
        "batch_size": r.batch_size or base.batch_size,
        "optimizer": r.optimizer or base.optimizer,
        "betas": tuple(r.betas),
        "weight_decay": r.weight_decay,
        "mosaic_rates": dict(r.mosaic_rates),
    }
    explicit: dict[str, Any] = {k: getattr(train_cfg, k) for k in from_recipe}
    if explicit["optimizer"] == "base":
        explicit["optimizer"] = base.optimizer
    if explicit["mosaic_rates"] is not None and not r.mosaic:
        explicit["mosaic_rates"] = None  # only recipes with a mosaic take the rates
    if explicit["betas"] is not None:
        explicit["betas"] = tuple(explicit["betas"])
    values = {k: from_recipe[k] if v is None else v for k, v in explicit.items()}
    overrides = {
        k: {"recipe": from_recipe[k], "used": v}
        for k, v in explicit.items()
        if v is not None and v != from_recipe[k]
    }
    return Training(recipe=r.name, overrides=overrides, **values)


def recipe_label(t: Training) -> str:
    """One line naming a row's recipe and its values, overrides marked (for the tables)."""
    mosaic = (
        ", mosaic " + ", ".join(f"{k} {v:g}" for k, v in t.mosaic_rates.items())
        if t.mosaic_rates
        else ""
    )
    text = (
        f"{t.recipe}: {t.epochs} epochs, lr {t.lr:g}, batch {t.batch_size}, {t.optimizer} "
        f"β=({t.betas[0]:g}, {t.betas[1]:g}){mosaic}"
    )
    if t.overrides:
        text += " (profile overrides: " + ", ".join(sorted(t.overrides)) + ")"
    return text
