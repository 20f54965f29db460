"""One typed configuration for every stage, read from a profile YAML (``notebooks/params/<name>.yaml``).

Class defaults are the paper profile's values (``hxpe/LEDGER.md`` says where each comes from); the demo
profile overrides what it must. Unknown keys are errors, so a typo never silently falls back to a
default.

Example:
    >>> from hxpe.config import load_config
    >>> cfg = load_config("notebooks/params/demo.yaml")  # relative paths start at the repo root
    >>> cfg.profile, cfg.train.epochs, cfg.results_dir.name
    ('demo', 2, 'demo')
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hxpe.agent.config import AgentConfig
from hxpe.data.config import DataConfig
from hxpe.evaluation.config import EvaluationConfig
from hxpe.figures.config import FiguresConfig
from hxpe.model.config import ModelConfig, TrainConfig
from hxpe.paths import resolve
from hxpe.results_layout import ResultsLayout

_ENV_PATTERN = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


class Config(BaseModel):
    """The whole run: one profile."""

    model_config = ConfigDict(extra="forbid")

    profile: str = Field(description="Profile name; outputs go to results/<profile>/.")
    description: str = ""
    seed: int = Field(111, description="Global seed (Python, NumPy, torch, data-loader workers).")
    deterministic: bool = Field(
        True, description="torch.use_deterministic_algorithms where the platform offers it."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    figures: FiguresConfig = Field(default_factory=FiguresConfig)
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"hxpe": {}},
        description="Ablation rows: variant name -> overrides of the `model` section.",
    )
    main_variant: str = Field("hxpe", description="The variant reported as 'HXPE'.")

    @model_validator(mode="after")
    def _check_variants(self) -> Config:
        """Every variant's model section validates at load (bounds included), not at its stage."""
        for name in self.variants:
            try:
                self.model_for(name)
            except ValidationError as err:
                faults = "; ".join(
                    f"variants.{name}.{'.'.join(map(str, e['loc']))}: {e['msg']} "
                    f"(got {e.get('input')!r})"
                    for e in err.errors()
                )
                raise ValueError(faults) from None
        return self

    @property
    def layout(self) -> ResultsLayout:
        """Every path under the profile's results directory."""
        return ResultsLayout(self.profile)

    @property
    def results_dir(self) -> Path:
        """``results/<profile>`` (or ``$HXPE_RESULTS_ROOT/<profile>``); writers create it."""
        return self.layout.root

    def model_for(self, variant: str) -> ModelConfig:
        """The model section with a variant's overrides applied (validated)."""
        if variant not in self.variants:
            raise KeyError(
                f"Unknown variant {variant!r}; the profile defines {sorted(self.variants)}."
            )
        merged = deep_merge(self.model.model_dump(), self.variants[variant])
        return ModelConfig.model_validate(merged)

    def reference_rule_for(self, variant: str) -> str:
        """The variant's reference rule (``model.reference_rule``), else ``data.reference_rule``."""
        return self.model_for(variant).reference_rule or self.data.reference_rule

    def reference_rules(self) -> list[str]:
        """The distinct reference rules of the profile, ``data.reference_rule`` first: each one
        gets its own VLM descriptions and LLM extractions (stages 02-03)."""
        rules = [self.data.reference_rule] + [self.reference_rule_for(v) for v in self.variants]
        return list(dict.fromkeys(rules))

    def random_init_backbones(self) -> dict[str, dict[str, Any]]:
        """Backbones that some variant builds from a config with random weights (demo, dry run)."""
        out: dict[str, dict[str, Any]] = {}
        for variant in self.variants:
            m = self.model_for(variant)
            if m.clip.pretrained is None:
                entry = {"model_name": m.clip.model_name, "config": m.clip.config_file}
                key = "clip (random init)"
                if out.get(key, entry) != entry:  # a second random CLIP (the demo's WinCLIP)
                    key = f"clip {m.clip.model_name} (random init)"
                out[key] = entry
            if m.vfm.enabled and m.vfm.config_file:
                out["dinov2 (random init)"] = {"config": m.vfm.config_file}
        return out

    @property
    def uses_random_weights(self) -> bool:
        """True when any variant builds CLIP or DINOv2 without pretrained weights (demo, dry run)."""
        return bool(self.random_init_backbones())

    def section_hash(self, *sections: str) -> str:
        """A short hash of the named sections (to tell when a stage's inputs changed)."""
        payload = {s: getattr(self, s) for s in sections}
        text = json.dumps(
            {
                k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v
                for k, v in payload.items()
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``.

    >>> deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    {'a': {'b': 1, 'c': 3}}
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def expand_env(value: Any) -> Any:
    """Expand ``${NAME}`` and ``${NAME:-default}`` in every string of a nested structure."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group("name"), match.group("default")
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise KeyError(
                f"The params file uses ${{{name}}} but it is not set; export {name}=... "
                f"or write ${{{name}:-default}} in the YAML."
            )

        return _ENV_PATTERN.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def read_params_yaml(file: Path) -> dict[str, Any]:
    """The mapping of a params YAML (``safe_load``: tags are refused); a file that is not valid YAML,
    holds a tag, or is not a mapping raises ValueError naming the file, the line and the fix."""
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = str(getattr(err, "problem", None) or type(err).__name__)
        if isinstance(err, yaml.constructor.ConstructorError) and "tag" in problem:
            raise ValueError(
                f"Params file {file} uses a YAML tag at{where} ({problem}); params files hold "
                f"plain values only. Remove the tag."
            ) from None
        raise ValueError(
            f"Params file {file} is not valid YAML at{where}: {problem}. Fix that line; "
            f"notebooks/params/demo.yaml shows the format."
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"Params file {file} holds a {type(raw).__name__}, not a mapping of settings "
            f"(profile: ..., model: ..., ...); notebooks/params/demo.yaml shows the format."
        )
    return raw


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read, expand and validate a profile YAML; ``overrides`` are deep-merged on top."""
    file = resolve(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"Params file {file} not found. Profiles live in notebooks/params/<name>.yaml; "
            f"pick one with PROFILE=<name>."
        )
    raw = read_params_yaml(file)
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return Config.model_validate(expand_env(raw))
    except ValidationError as err:
        raise InvalidSettings(file, err) from None


class InvalidSettings(ValueError):
    """A params file whose settings fail validation: one line for the user, pydantic's details kept.

    ``errors()`` returns pydantic's list (``loc``, ``msg``, ``input``, ...) for programs and tests.
    """

    def __init__(self, file: Path, err: ValidationError) -> None:
        super().__init__(invalid_settings_message(file, err))
        self.file = file
        self._errors = err.errors()

    def errors(self) -> list[Any]:
        """Pydantic's error records, one per invalid setting."""
        return list(self._errors)


def invalid_settings_message(file: Path, err: ValidationError) -> str:
    """One line naming the params file and, per invalid setting, its key, the rule and the value.

    Example:
        >>> class Train(BaseModel):
        ...     epochs: int = Field(ge=1)
        >>> try:
        ...     Train.model_validate({"epochs": -3})
        ... except ValidationError as err:
        ...     print(invalid_settings_message(Path("p.yaml"), err))
        p.yaml: invalid setting: epochs: Input should be greater than or equal to 1 (got -3). Fix the value in the params file and rerun.
    """
    problems = []
    for e in err.errors():
        key = ".".join(str(part) for part in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        got = f" (got {e['input']!r})" if e["type"] != "value_error" and key else ""
        problems.append(f"{key}: {msg}{got}" if key else msg)
    return f"{file}: invalid setting: {'; '.join(problems)}. Fix the value in the params file and rerun."


__all__ = [
    "Config",
    "InvalidSettings",
    "deep_merge",
    "expand_env",
    "invalid_settings_message",
    "load_config",
    "read_params_yaml",
]
