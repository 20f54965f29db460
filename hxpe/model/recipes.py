"""Training recipes: how each table row is trained and tested, registered by name.

A :class:`Recipe` fixes what the authors' scripts (or the paper) fix: epochs, learning rate, batch
size, optimiser and its betas and weight decay, the CLIP feature layers, and the augmentation
(AdaCLIP's 2x2 mosaic with its rate per training dataset). Each value carries its anchor
(``anchors``: the authors' file:line, or the paper); ``hxpe/LEDGER.md`` has one row per value.

* ``hxpe`` (here): the paper's recipe for its own rows (5 epochs, lr 0.01); what the paper leaves
  open (batch size, optimiser) is the base's own (:class:`hxpe.model.bases.base.BaseArithmetic`).
* the authors' released recipes are registered beside their base: ``adaclip``
  (:mod:`hxpe.model.bases.adaclip`), ``anomalyclip`` and ``anomalyclip_paper``
  (:mod:`hxpe.model.bases.anomalyclip`).

A variant picks its recipe with ``model.recipe``; the profile's ``train`` section may override any
value explicitly (the demo scales epochs and batch size down), and the checkpoint records both
(:func:`hxpe.model.config.training_recipe`).

Example:
    >>> import hxpe.model.bases  # registers the authors' recipes
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
from dataclasses import dataclass, field
from typing import Literal

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
