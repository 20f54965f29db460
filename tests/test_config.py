"""The typed config: profiles load, env expansion, unknown keys and variants."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hxpe.config import Config, deep_merge, expand_env, load_config
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
    with pytest.raises(ValidationError, match="evalaution"):
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
