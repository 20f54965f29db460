"""Recipes per row (hxpe.model.recipes): the baseline rows train and test as their authors' released
scripts, the HXPE rows as the paper; explicit profile values override and are recorded."""

from __future__ import annotations

import re

import pytest
import torch

from hxpe.config import load_config
from hxpe.model.config import ModelConfig, TrainConfig
from hxpe.model.recipes import available_recipes, recipe
from hxpe.paths import resolve
from hxpe.train import make_optimizer, training_recipe

PAPER = resolve("notebooks/params/paper.yaml")
DEMO = resolve("notebooks/params/demo.yaml")


def test_paper_rows_take_their_recipes_values():
    cfg = load_config(PAPER)
    got = {
        v: training_recipe(cfg.train, cfg.model_for(v))
        for v in ("hxpe", "hxpe_anomalyclip", "adaclip", "anomalyclip", "anomalyclip_paper_layers")
    }
    row = {
        v: (t.recipe, t.epochs, t.lr, t.batch_size, t.optimizer, t.betas) for v, t in got.items()
    }
    assert row == {
        "hxpe": ("hxpe", 5, 0.01, 1, "adamw", (0.5, 0.999)),
        "hxpe_anomalyclip": ("hxpe", 5, 0.01, 8, "adam", (0.5, 0.999)),
        "adaclip": ("adaclip", 5, 0.01, 1, "adamw", (0.5, 0.999)),
        "anomalyclip": ("anomalyclip", 15, 0.001, 8, "adam", (0.5, 0.999)),
        "anomalyclip_paper_layers": ("anomalyclip_paper", 15, 0.001, 8, "adam", (0.5, 0.999)),
    }
    assert all(not t.overrides for t in got.values())
    # layers: AnomalyCLIP's scripts pass --features_list 24; the named variant keeps the four
    assert cfg.model_for("anomalyclip").clip.layers == [24]
    assert cfg.model_for("anomalyclip_paper_layers").clip.layers == [6, 12, 18, 24]
    assert cfg.model_for("hxpe_anomalyclip").clip.layers == [6, 12, 18, 24]
    assert cfg.model_for("adaclip").clip.layers == [6, 12, 18, 24]
    assert got["adaclip"].mosaic_rates == {"mvtec": 0.2}
    assert recipe("adaclip").mosaic_rate("mvtec") == 0.2
    assert {recipe("adaclip").mosaic_rate(k) for k in ("visa", "mpdd", "btad", "ksdd", "dagm")} == {
        0.0
    }
    assert recipe("hxpe").mosaic_rate("mvtec") == 0.0


def test_demo_overrides_are_explicit_and_recorded():
    cfg = load_config(DEMO)
    anomaly = training_recipe(cfg.train, cfg.model_for("anomalyclip"))
    assert anomaly.recipe == "anomalyclip" and anomaly.lr == 0.001
    assert anomaly.overrides == {
        "epochs": {"recipe": 15, "used": 2},
        "batch_size": {"recipe": 8, "used": 4},
    }
    assert cfg.model_for("anomalyclip").clip.layers == [4]  # the deepest of the tiny CLIP's
    ada = training_recipe(cfg.train, cfg.model_for("adaclip"))
    assert ada.overrides["mosaic_rates"] == {"recipe": {"mvtec": 0.2}, "used": {"demo": 0.2}}
    hx = training_recipe(cfg.train, cfg.model_for("hxpe"))
    assert "mosaic_rates" not in hx.overrides and hx.mosaic_rates == {}


def test_optimiser_is_the_recipes():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adamw = make_optimizer(params, TrainConfig(), ModelConfig(recipe="adaclip"))
    assert type(adamw) is torch.optim.AdamW
    group = adamw.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.01, (0.5, 0.999), 0.01)
    adam = make_optimizer(
        params, TrainConfig(), ModelConfig(base="anomalyclip", recipe="anomalyclip")
    )
    assert type(adam) is torch.optim.Adam
    assert (adam.param_groups[0]["lr"], adam.param_groups[0]["weight_decay"]) == (0.001, 0)


def test_unknown_recipe_says_which_exist():
    with pytest.raises(ValueError, match=r"Unknown recipe 'adaclp'.*registered: \['adaclip'"):
        ModelConfig(recipe="adaclp")


def test_every_recipe_value_has_a_ledger_row_with_its_anchor():
    ledger = resolve("hxpe/LEDGER.md").read_text()
    for name in available_recipes():
        r = recipe(name)
        for key, anchor in r.anchors.items():
            line = next((ln for ln in ledger.splitlines() if f"recipe `{name}` {key}" in ln), None)
            assert line is not None, f"no ledger row for recipe {name} {key}"
            files = re.findall(r"[\w/]+\.(?:py|sh):[\d-]+|\w+\.sh", anchor)
            assert all(f in line for f in files), (name, key, files)
