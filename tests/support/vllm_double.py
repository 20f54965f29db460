"""A test double of the ``vllm`` module (:func:`stand_in_vllm`) that holds to the pinned vLLM's keyword
API (``hxpe/environment/vllm_api.json``, written by :mod:`hxpe.environment.vllm_api` from the pinned
wheel's source), so the vLLM backend's tests run on CPU without vLLM and still fail on a keyword the
real engine would refuse.
"""

from __future__ import annotations

import types
from typing import Any

from hxpe.environment.vllm_api import llm_keywords, load_snapshot


class _Params:
    """Keyword arguments recorded as they were passed; ``allowed`` (set per class by
    :func:`stand_in_vllm`) lists the keywords the pinned vLLM's class takes."""

    allowed: frozenset[str] = frozenset()
    version = ""

    def __init__(self, **kwargs: Any) -> None:
        _refuse_unknown(f"{type(self).__name__}()", kwargs, self.allowed, self.version)
        self.kwargs = kwargs


def _refuse_unknown(
    where: str, kwargs: dict[str, Any], allowed: frozenset[str], version: str
) -> None:
    """A TypeError, as Python raises it, for keywords the pinned vLLM does not have."""
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"{where} got unexpected keyword argument(s) {unknown}: vLLM {version} has no such "
            f"keyword (hxpe/environment/vllm_api.json, the pinned wheel's API)"
        )


def _params_class(name: str, api: dict[str, Any], version: str) -> type[_Params]:
    return type(name, (_Params,), {"allowed": frozenset(api["fields"]), "version": version})


def _check_structured_config(value: dict[str, Any], snap: dict[str, Any]) -> None:
    """What vLLM's StructuredOutputsConfig accepts (its fields, backends and validator); vLLM itself
    drops unknown keys of the dict silently, the stand-in refuses them."""
    version = snap["vllm"]
    fields = frozenset(snap["api"]["StructuredOutputsConfig"]["fields"])
    _refuse_unknown("StructuredOutputsConfig()", value, fields, version)
    backend = value.get("backend", "auto")
    if backend not in snap["structured_outputs_backends"]:
        raise ValueError(f"structured_outputs_config.backend {backend!r} is not a vLLM backend")
    if value.get("disable_any_whitespace") and backend not in ("xgrammar", "guidance"):
        raise ValueError(
            "disable_any_whitespace is only supported for xgrammar and guidance backends."
        )


def stand_in_vllm(
    reply: str = "No anomaly",
    *,
    structured: bool = True,
    die_after: int | None = None,
    snapshot: dict[str, Any] | None = None,
) -> types.ModuleType:
    """A module with vLLM's names that records calls (``vllm.calls``) and holds to the pinned
    vLLM's keyword API (:mod:`hxpe.environment.vllm_api`): ``LLM``, ``LLM.generate``,
    ``SamplingParams`` and ``StructuredOutputsParams`` refuse keywords the pinned version lacks, and
    ``structured_outputs_config`` is checked as vLLM's config checks it.

    ``structured=False`` leaves out ``StructuredOutputsParams`` (an API without it).
    ``die_after=n``: the engine answers ``n`` prompts, then raises on the prompt after (mid-batch,
    like an out-of-memory error) and on every call after that (a dead engine).
    """
    snap = snapshot or load_snapshot()
    version = snap["vllm"]
    sampling_params = _params_class("SamplingParams", snap["api"]["SamplingParams"], version)
    sp = types.ModuleType("vllm.sampling_params")
    vars(sp)["SamplingParams"] = sampling_params
    if structured:
        vars(sp)["StructuredOutputsParams"] = _params_class(
            "StructuredOutputsParams", snap["api"]["StructuredOutputsParams"], version
        )
    init_keywords = frozenset(llm_keywords(snap))
    generate_keywords = frozenset(snap["api"]["LLM.generate"]["parameters"])
    calls: list[tuple[Any, ...]] = []
    answered = [0]

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            _refuse_unknown("LLM.__init__()", kwargs, init_keywords, version)
            if isinstance(kwargs.get("structured_outputs_config"), dict):
                _check_structured_config(kwargs["structured_outputs_config"], snap)
            self.kwargs = kwargs
            calls.append(("init", kwargs))

        def generate(
            self, prompts: list[Any], sampling_params: _Params | None = None, **kwargs: Any
        ) -> list[types.SimpleNamespace]:
            _refuse_unknown("LLM.generate()", kwargs, generate_keywords, version)
            calls.append(("generate", prompts, sampling_params))
            if die_after is not None and answered[0] + len(prompts) > die_after:
                answered[0] = die_after
                raise RuntimeError("CUDA out of memory (stand-in engine; it is dead from now on)")
            answered[0] += len(prompts)
            out = types.SimpleNamespace(text=reply, finish_reason="stop")
            return [types.SimpleNamespace(outputs=[out]) for _ in prompts]

    vllm = types.ModuleType("vllm")
    vars(vllm).update(
        __version__=f"stand-in-{version}",
        sampling_params=sp,
        SamplingParams=sampling_params,
        LLM=LLM,
        calls=calls,
    )
    return vllm
