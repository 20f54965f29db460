"""The typed config: profiles load, env expansion, unknown keys and variants."""

from __future__ import annotations

import pytest

from hxpe.config import Config, InvalidSettings, deep_merge, expand_env, load_config
from hxpe.paths import repo_root

PARAMS = repo_root() / "notebooks" / "params"


@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_profiles_load(profile):
    cfg = load_config(PARAMS / f"{profile}.yaml")
    assert cfg.profile == profile
    assert cfg.results_dir.name == profile
    for variant in cfg.variants:
        cfg.model_for(variant)  # every variant validates


def test_paper_profile_states_the_paper_settings():
    from hxpe.train import training_recipe

    cfg = load_config(PARAMS / "paper.yaml")
    hxpe = training_recipe(cfg.train, cfg.model_for("hxpe"))
    assert (hxpe.recipe, hxpe.epochs, hxpe.lr, hxpe.overrides) == ("hxpe", 5, 0.01, {})
    assert cfg.model.clip.layers == [6, 12, 18, 24]
    assert cfg.model.clip.model_name == "ViT-L-14-336-quickgelu"
    assert cfg.evaluation.image_size == 518
    assert {d.train for d in cfg.evaluation.directions} == {"mvtec", "visa"}


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("HXPE_TEST_ROOT", "/data/x")
    assert expand_env({"a": ["${HXPE_TEST_ROOT}/mvtec"]}) == {"a": ["/data/x/mvtec"]}
    monkeypatch.delenv("HXPE_TEST_ROOT")
    assert expand_env("${HXPE_TEST_ROOT:-data}/v") == "data/v"
    with pytest.raises(KeyError, match="export HXPE_TEST_ROOT"):
        expand_env("${HXPE_TEST_ROOT}")


def test_unknown_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: x\ntrain: {epochs: 1}\nevalaution: {}\n")
    with pytest.raises(InvalidSettings, match="evalaution"):
        load_config(bad)


def test_missing_params_file_says_where_profiles_live(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebooks/params"):
        load_config(tmp_path / "nope.yaml")


def test_variant_overrides_merge_deeply():
    cfg = Config(profile="t", variants={"big": {"clip": {"image_size": 224}}})
    assert cfg.model_for("big").clip.image_size == 224
    assert cfg.model_for("big").clip.layers == [6, 12, 18, 24]
    with pytest.raises(KeyError, match="big"):
        cfg.model_for("small")
    assert deep_merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ({"train": {"epochs": -3}}, "train.epochs", "greater than or equal to 1"),
        ({"train": {"epochs": 0}}, "train.epochs", "greater than or equal to 1"),
        ({"train": {"batch_size": 0}}, "train.batch_size", "greater than or equal to 1"),
        ({"train": {"batch_size": 5000}}, "train.batch_size", "less than or equal to 1024"),
        ({"train": {"lr": 0}}, "train.lr", "greater than 0"),
        (
            {"evaluation": {"image_size": 1e9}},
            "evaluation.image_size",
            "less than or equal to 2048",
        ),
        ({"evaluation": {"image_size": 0}}, "evaluation.image_size", "greater than or equal to 8"),
        ({"evaluation": {"batch_size": 0}}, "evaluation.batch_size", "greater than or equal to 1"),
        (
            {"evaluation": {"num_workers": -1}},
            "evaluation.num_workers",
            "greater than or equal to 0",
        ),
        (
            {"model": {"clip": {"image_size": 4096}}},
            "model.clip.image_size",
            "less than or equal to 2048",
        ),
        ({"model": {"sigma": -1}}, "model.sigma", "greater than or equal to 0"),
        (
            {"data": {"demo": {"image_size": 3}}},
            "data.demo.image_size",
            "greater than or equal to 8",
        ),
        (
            {"agent": {"extract": {"max_new_tokens": 0}}},
            "agent.extract.max_new_tokens",
            "greater than or equal to 1",
        ),
        ({"figures": {"dpi": 0}}, "figures.dpi", "greater than or equal to 10"),
    ],
)
def test_numeric_settings_out_of_bounds_are_refused_at_load_naming_the_key(override, key, message):
    """Issue 24: ``train.epochs: -3`` or ``evaluation.image_size: 1e9`` never reach a stage."""
    with pytest.raises(InvalidSettings) as err:
        load_config(repo_root() / "notebooks" / "params" / "demo.yaml", override)
    [error] = err.value.errors()
    assert ".".join(map(str, error["loc"])) == key
    assert message in error["msg"]


def test_a_variant_out_of_bounds_is_refused_at_load_naming_the_variant_and_key():
    override = {"variants": {"big": {"clip": {"image_size": 100_000}}}}
    with pytest.raises(InvalidSettings) as err:
        load_config(repo_root() / "notebooks" / "params" / "demo.yaml", override)
    [error] = err.value.errors()
    assert error["msg"] == (
        "Value error, variants.big.clip.image_size: Input should be less than or equal to 2048 "
        "(got 100000)"
    )


def test_an_invalid_setting_is_one_line_naming_the_file_key_rule_and_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: x\ntrain: {epochs: -3}\n")
    with pytest.raises(InvalidSettings) as err:
        load_config(bad)
    assert str(err.value) == (
        f"{bad}: invalid setting: train.epochs: Input should be greater than or equal to 1 "
        "(got -3). Fix the value in the params file and rerun."
    )
    assert err.value.file == bad
