"""Training recipes: how each table row is trained and tested, held by the registry.

A :class:`Recipe` fixes what the authors' scripts (or the paper) fix: epochs, learning rate, batch
size, optimiser and its betas and weight decay, the CLIP feature layers, and the augmentation
(AdaCLIP's 2x2 mosaic with its rate per training dataset). Each value carries its anchor
(``anchors``: the authors' file:line, or the paper); ``hxpe/LEDGER.md`` has one row per value.

* ``adaclip``: AdaCLIP's released ``train.py``/``train.sh`` (the ``adaclip`` baseline row).
* ``anomalyclip``: AnomalyCLIP's released ``train.sh``/``test.sh``, which pass ``--features_list 24``
  (the ``anomalyclip`` baseline row).
* ``anomalyclip_paper``: the same with the paper's and argparse's four layers ``[6, 12, 18, 24]``
  (a named variant: the scripts win by default).
* ``hxpe``: the paper's recipe for its own rows (5 epochs, lr 0.01); what the paper leaves open
  (batch size, optimiser) is the base's own (:class:`hxpe.model.config.BaseArithmetic`).

A variant picks its recipe with ``model.recipe``; the profile's ``train`` section may override any
value explicitly (the demo scales epochs and batch size down), and the checkpoint records both.

Example:
    >>> r = recipe("anomalyclip")
    >>> r.epochs, r.lr, r.batch_size, r.optimizer, r.betas, r.layers
    (15, 0.001, 8, 'adam', (0.5, 0.999), 'last')
    >>> recipe_layers(r, [6, 12, 18, 24]), recipe_layers(recipe("adaclip"), [6, 12, 18, 24])
    ([24], [6, 12, 18, 24])
    >>> recipe("adaclip").mosaic_rate("mvtec"), recipe("adaclip").mosaic_rate("visa")
    (0.2, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hxpe.model.config import ModelConfig, TrainConfig

Optimizer = Literal["adam", "adamw", "sgd"]
Layers = Literal["all", "last"]


@dataclass(frozen=True)
class Recipe:
    """One row's training and testing recipe.

    Attributes:
        name: the ``model.recipe`` value.
        source: where the recipe comes from (repository@commit, or the paper).
        epochs, lr: training length and learning rate.
        batch_size, optimizer: None = the base's own (``model.<base>.batch_size``/``optimizer``).
        betas, weight_decay: the optimiser's (weight decay: AdamW's; Adam has none).
        layers: ``all`` = the profile's ``model.clip.layers``; ``last`` = only the deepest of them
            (train and test).
        mosaic_rates: AdaCLIP's 2x2 mosaic: rate per training dataset kind (others 0); empty = no
            mosaic.
        anchors: value name -> the file:line (or paper statement) it comes from.
    """

    name: str
    source: str
    epochs: int
    lr: float
    batch_size: int | None
    optimizer: Optimizer | None
    betas: tuple[float, float]
    weight_decay: float
    layers: Layers
    mosaic_rates: Mapping[str, float] = field(default_factory=dict)
    anchors: Mapping[str, str] = field(default_factory=dict)

    @property
    def mosaic(self) -> bool:
        return bool(self.mosaic_rates)

    def mosaic_rate(self, kind: str, override: Mapping[str, float] | None = None) -> float:
        """The mosaic rate for a training dataset of ``kind`` (0 without a mosaic); ``override``
        replaces the recipe's table (``train.mosaic_rates``) for recipes that have one."""
        if not self.mosaic:
            return 0.0
        table = self.mosaic_rates if override is None else override
        return float(table.get(kind, 0.0))


_RECIPES: dict[str, Recipe] = {}


def register_recipe(r: Recipe) -> Recipe:
    """Add ``r`` (a later registration of the same name replaces the earlier one)."""
    _RECIPES[r.name] = r
    return r


def available_recipes() -> list[str]:
    return list(_RECIPES)


def recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        raise KeyError(
            f"Unknown recipe {name!r} (model.recipe); registered: {sorted(_RECIPES)}. "
            f"Register one with hxpe.model.recipes.register_recipe."
        )
    return _RECIPES[name]


def recipe_layers(r: Recipe, layers: list[int]) -> list[int]:
    """The CLIP blocks a recipe uses out of the profile's ``model.clip.layers``."""
    return [max(layers)] if r.layers == "last" else list(layers)


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
    from_recipe = {
        "epochs": r.epochs,
        "lr": r.lr,
        "batch_size": r.batch_size or base.batch_size,
        "optimizer": r.optimizer or base.optimizer,
        "betas": tuple(r.betas),
        "weight_decay": r.weight_decay,
        "mosaic_rates": dict(r.mosaic_rates),
    }
    explicit = {k: getattr(train_cfg, k) for k in from_recipe}
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


_ANOMALYCLIP = dict(
    source="zqhang/AnomalyCLIP@45ed4dd (train.sh, test.sh)",
    epochs=15,
    lr=0.001,
    batch_size=8,
    optimizer="adam",
    betas=(0.5, 0.999),
    weight_decay=0.0,
)
_ANOMALYCLIP_ANCHORS = {
    "epochs": "train.py:130 (default 15); train.sh --epoch 15",
    "lr": "train.py:131 (default 0.001); train.sh passes none",
    "batch_size": "train.py:132 (default 8); train.sh --batch_size 8",
    "optimizer": "train.py:44 torch.optim.Adam(..., betas=(0.5, 0.999)), no weight decay",
    "augmentation": "none (dataset.py:59-78)",
}
register_recipe(
    Recipe(
        name="anomalyclip",
        layers="last",
        anchors=_ANOMALYCLIP_ANCHORS
        | {"layers": "train.sh and test.sh --features_list 24 (author, issue #82: all results)"},
        **_ANOMALYCLIP,
    )
)
register_recipe(
    Recipe(
        name="anomalyclip_paper",
        layers="all",
        anchors=_ANOMALYCLIP_ANCHORS
        | {"layers": "train.py:128, test.py:184 default [6, 12, 18, 24]; the paper before v10"},
        **_ANOMALYCLIP,
    )
)
register_recipe(
    Recipe(
        name="adaclip",
        source="caoyunkang/AdaCLIP@e27ee32 (train.py, train.sh)",
        epochs=5,
        lr=0.01,
        batch_size=1,
        optimizer="adamw",
        betas=(0.5, 0.999),
        weight_decay=0.01,
        layers="all",
        mosaic_rates={"mvtec": 0.2},
        anchors={
            "epochs": "train.py:155 (default 5); train.sh passes none",
            "lr": "train.py:156 (default 0.01)",
            "batch_size": "train.py:157 (default 1), 177-179 (only 1 supported)",
            "optimizer": "method/trainer.py:87 AdamW(lr, betas=(0.5, 0.999)); weight decay "
            "torch's default 0.01",
            "layers": "train.py:49 [d/4, d/2, 3d/4, d] (6, 12, 18, 24 on ViT-L)",
            "augmentation": "dataset/base_dataset.py:54-98 combine_img (2x2), :108 "
            "random() < aug_rate; dataset/mvtec.py:15 aug_rate=0.2; visa.py:15, mpdd.py:12, "
            "btad.py:12, sdd.py:13, dagm.py:12, dtd.py:12 aug_rate=0.0",
        },
    )
)
register_recipe(
    Recipe(
        name="hxpe",
        source="the paper (HXPE rows)",
        epochs=5,
        lr=0.01,
        batch_size=None,
        optimizer=None,
        betas=(0.5, 0.999),
        weight_decay=0.01,
        layers="all",
        anchors={
            "epochs": "paper [B]: 5 epochs",
            "lr": "paper [B]: lr 0.01",
            "batch_size": "not stated [I]: the base's own",
            "optimizer": "not stated [I]: the base's own (AdamW weight decay 0.01, torch default)",
            "layers": "the profile's model.clip.layers",
            "augmentation": "not stated [I]: none",
        },
    )
)
