"""The one small interface every agent backend implements, and the registry that picks one.

A *describer* turns (reference image, test image, prompt) into text; an *extractor* turns a
description into the JSON text of an :class:`hxpe.agent.schema.Extraction` (the same parser checks
every extractor's output, so retries and failure reasons are uniform). Both work on batches, so that
engines like vLLM can schedule many requests at once.

``settings()`` returns everything besides the prompt and the images that determines the output
(engine options such as ``max_pixels``, the classical describer's thresholds); it is part of the
cache key, so changing one of them redoes the affected records and nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from PIL import Image

from hxpe.agent.config import DescribeConfig, ExtractConfig


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one attempt."""

    temperature: float
    max_new_tokens: int
    seed: int

    @classmethod
    def for_attempt(cls, cfg: DescribeConfig | ExtractConfig, attempt: int) -> Sampling:
        """Attempt 0 decodes as configured; retries sample (``retry_temperature``, seed + attempt)."""
        temperature = (
            cfg.temperature if attempt == 0 else max(cfg.temperature, cfg.retry_temperature)
        )
        return cls(
            temperature=temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + attempt
        )


@dataclass(frozen=True)
class Generation:
    """A backend's raw answer: the text and why generation stopped ('stop' or 'length')."""

    text: str
    finish_reason: str | None = "stop"


@dataclass(frozen=True)
class DescribeRequest:
    image_id: str
    class_name: str
    prompt: str
    image: Image.Image
    reference: Image.Image | None

    @property
    def images(self) -> list[Image.Image]:
        """The images in prompt order: the reference (when there is one), then the test image."""
        return [self.image] if self.reference is None else [self.reference, self.image]


@dataclass(frozen=True)
class ExtractRequest:
    image_id: str
    description: str
    prompt: str
    system: str | None


class Describer(Protocol):
    def settings(self) -> dict[str, Any]: ...

    def describe(
        self, requests: Sequence[DescribeRequest], sampling: Sampling
    ) -> list[Generation]: ...


class Extractor(Protocol):
    def settings(self) -> dict[str, Any]: ...

    def extract(
        self, requests: Sequence[ExtractRequest], sampling: Sampling
    ) -> list[Generation]: ...


BACKEND_MODULES: dict[str, str] = {
    "classical": "hxpe.agent.backend_classical",
    "rules": "hxpe.agent.backend_rules",
    "transformers": "hxpe.agent.backend_hf",
    "vllm": "hxpe.agent.backend_vllm",
}
"""Where each backend lives; its module registers it (:func:`register_backend`) when imported, and
is imported on first use only, so that an unused engine (vLLM, transformers) is never loaded."""


@dataclass(frozen=True)
class Backend:
    """One agent backend: its engine settings, and the describer and/or extractor it builds."""

    name: str
    settings_for: Callable[..., dict[str, Any]]  # (options, structured=False) -> cache-key settings
    describer: Callable[[DescribeConfig], Describer] | None = None
    extractor: Callable[[ExtractConfig], Extractor] | None = None


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` to the registry (called by each backend module when it is imported)."""
    if BACKEND_MODULES.get(backend.name) is None:
        raise ValueError(
            f"agent backend {backend.name!r} is not in BACKEND_MODULES "
            f"(hxpe/agent/backend_base.py); add its module there so it can be found by name"
        )
    _REGISTRY[backend.name] = backend
    return backend


def find_backend(name: str) -> Backend | None:
    """The registered backend ``name``, importing its module on first use; ``None`` if unknown.

    >>> find_backend("rules").extractor is not None
    True
    >>> find_backend("classical").extractor is None  # the classical backend only describes
    True
    >>> find_backend("replay") is None  # replay reads the cache: no engine
    True
    """
    module = BACKEND_MODULES.get(name)
    if module is None:
        return None
    if name not in _REGISTRY:
        importlib.import_module(module)
    return _REGISTRY[name]


def _able(role: str) -> str:
    """``'a, b or c'``: the backends that build a describer (``role='describer'``) or extractor."""
    names = [n for n in BACKEND_MODULES if getattr(find_backend(n), role) is not None]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _no_factory(cfg: DescribeConfig | ExtractConfig, role: str, stage: str) -> ValueError:
    """The error for a backend ``cfg`` names that builds no ``role`` (``describer``/``extractor``)."""
    return ValueError(
        f"agent.{stage}.backend {cfg.backend!r} has no {role} "
        f"('replay' reads the cache; use {_able(role)})"
    )


def make_describer(cfg: DescribeConfig) -> Describer:
    """The describer named by ``cfg.backend`` (engines are imported and loaded only here)."""
    backend = find_backend(cfg.backend)
    if backend is None or backend.describer is None:
        raise _no_factory(cfg, "describer", "describe")
    return backend.describer(cfg)


def make_extractor(cfg: ExtractConfig) -> Extractor:
    """The extractor named by ``cfg.backend``."""
    backend = find_backend(cfg.backend)
    if backend is None or backend.extractor is None:
        raise _no_factory(cfg, "extractor", "extract")
    return backend.extractor(cfg)


def engine_settings(cfg: DescribeConfig | ExtractConfig) -> dict[str, Any]:
    """``settings()`` of the configured backend, computed from the config without loading a model."""
    backend = find_backend(cfg.backend)
    if backend is None:
        raise ValueError(f"backend {cfg.backend!r} has no engine settings")
    return backend.settings_for(cfg.options, structured=isinstance(cfg, ExtractConfig))


class LazyEngine:
    """A describer or extractor built on first use by ``factory`` and then reused: one engine per
    process for every reference rule of a profile (``hxpe describe``/``hxpe extract``), and none at
    all when everything is cached. It has the :class:`Describer` and :class:`Extractor` methods.

    >>> built = []
    >>> lazy = LazyEngine(lambda: built.append(1) or make_extractor(ExtractConfig(backend="rules")))
    >>> built  # nothing built yet
    []
    >>> lazy.settings() == lazy.settings(), built  # built once, on first use
    (True, [1])
    """

    def __init__(self, factory: Callable[[], Describer | Extractor]):
        self._factory = factory
        self._engine: Describer | Extractor | None = None

    @property
    def engine(self) -> Describer | Extractor:
        if self._engine is None:
            self._engine = self._factory()
        return self._engine

    def settings(self) -> dict[str, Any]:
        return self.engine.settings()

    def describe(self, requests: Sequence[DescribeRequest], sampling: Sampling) -> list[Generation]:
        return cast(Describer, self.engine).describe(requests, sampling)

    def extract(self, requests: Sequence[ExtractRequest], sampling: Sampling) -> list[Generation]:
        return cast(Extractor, self.engine).extract(requests, sampling)
