"""The one small interface every agent backend implements, and the factory that picks one.

A *describer* turns (reference image, test image, prompt) into text; an *extractor* turns a
description into the JSON text of an :class:`hxpe.agent.schema.Extraction` (the same parser checks
every extractor's output, so retries and failure reasons are uniform). Both work on batches, so that
engines like vLLM can schedule many requests at once.

``settings()`` returns everything besides the prompt and the images that determines the output
(engine options such as ``max_pixels``, the classical describer's thresholds); it is part of the
cache key, so changing one of them redoes the affected records and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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


@dataclass(frozen=True)
class ExtractRequest:
    image_id: str
    description: str
    prompt: str
    system: str | None


class Describer(Protocol):
    backend: str

    def settings(self) -> dict[str, Any]: ...

    def describe(
        self, requests: Sequence[DescribeRequest], sampling: Sampling
    ) -> list[Generation]: ...


class Extractor(Protocol):
    backend: str

    def settings(self) -> dict[str, Any]: ...

    def extract(
        self, requests: Sequence[ExtractRequest], sampling: Sampling
    ) -> list[Generation]: ...


def make_describer(cfg: DescribeConfig) -> Describer:
    """The describer named by ``cfg.backend`` (engines are imported and loaded only here)."""
    if cfg.backend == "classical":
        from hxpe.agent.backend_classical import ClassicalDescriber

        return ClassicalDescriber(**cfg.options)
    if cfg.backend == "transformers":
        from hxpe.agent.backend_hf import HFDescriber

        return HFDescriber.from_config(cfg)
    if cfg.backend == "vllm":
        from hxpe.agent.backend_vllm import VllmDescriber

        return VllmDescriber.from_config(cfg)
    raise ValueError(
        f"agent.describe.backend {cfg.backend!r} has no describer "
        f"('replay' reads the cache; use classical, transformers or vllm)"
    )


def make_extractor(cfg: ExtractConfig) -> Extractor:
    """The extractor named by ``cfg.backend``."""
    if cfg.backend == "rules":
        from hxpe.agent.backend_rules import RuleExtractor

        return RuleExtractor(**cfg.options)
    if cfg.backend == "transformers":
        from hxpe.agent.backend_hf import HFExtractor

        return HFExtractor.from_config(cfg)
    if cfg.backend == "vllm":
        from hxpe.agent.backend_vllm import VllmExtractor

        return VllmExtractor.from_config(cfg)
    raise ValueError(
        f"agent.extract.backend {cfg.backend!r} has no extractor "
        f"('replay' reads the cache; use rules, transformers or vllm)"
    )


def engine_settings(cfg: DescribeConfig | ExtractConfig) -> dict[str, Any]:
    """``settings()`` of the configured backend, computed from the config without loading a model."""
    if cfg.backend == "classical":
        from hxpe.agent.backend_classical import settings_for
    elif cfg.backend == "rules":
        from hxpe.agent.backend_rules import settings_for
    elif cfg.backend == "transformers":
        from hxpe.agent.backend_hf import settings_for
    elif cfg.backend == "vllm":
        from hxpe.agent.backend_vllm import settings_for as vllm_settings

        return vllm_settings(cfg.options, structured=isinstance(cfg, ExtractConfig))
    else:
        raise ValueError(f"backend {cfg.backend!r} has no engine settings")
    return settings_for(cfg.options)
