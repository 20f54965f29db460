"""Tiny random-init HXPE models for the model tests, built once per configuration and process."""

from __future__ import annotations

import json
import os

import torch

from hxpe.model.model import HXPEModel, build_model
from hxpe.model.tiny import tiny_model_config

BASES = ["adaclip", "anomalyclip", "winclip"]


_MODELS: dict[str, HXPEModel] = {}


def tiny(base: str, **overrides: object) -> HXPEModel:
    """A tiny model in eval mode, built once per configuration within a test process.

    Under mutmut (``MUTANT_UNDER_TEST`` set) every call builds afresh: mutmut runs a mutant only
    against the tests it saw calling the mutated function, and a cached model would credit its
    constructors to the first test that built it alone.
    """
    if os.environ.get("MUTANT_UNDER_TEST"):
        return build_model(tiny_model_config(base, **overrides)).eval()
    key = json.dumps([base, overrides], sort_keys=True)
    if key not in _MODELS:
        _MODELS[key] = build_model(tiny_model_config(base, **overrides)).eval()
    return _MODELS[key]


def images(n: int = 2, size: int = 112, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)
