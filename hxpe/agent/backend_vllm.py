"""The ``vllm`` backend: the GPU default (Qwen2-VL-72B-Instruct-AWQ describes, Qwen2.5-7B-Instruct
extracts), each stage in its own process.

Describe: the prompt is rendered by the HF processor's chat template (one
``<|vision_start|><|image_pad|><|vision_end|>`` per image) and sent with
``multi_modal_data={"image": [reference, test]}`` through ``llm.generate``; the engine is built with
``limit_mm_per_prompt={"image": 2, "video": 0}`` (left out, video defaults to 999 items and vLLM
profiles memory with a dummy video, shrinking the KV cache). Extract: the tokenizer's chat template,
plus structured outputs: ``StructuredOutputsParams(json=<the Extraction schema>)`` per request, and
the engine-level ``structured_outputs_config`` (:func:`structured_config`) that holds the backend and
the compact-JSON switch. vLLM's xgrammar and guidance backends read ``disable_any_whitespace`` only
from that engine config (a per-request value is ignored), and the config refuses it while the backend
is ``"auto"``; so the backend is always explicit. The default is ``guidance`` (the pinned llguidance
1.7.6 refuses whitespace in free-form objects and arrays too); ``xgrammar`` is the alternative. The pinned xgrammar 0.2.8 still requires a space after
commas in free-form objects (vLLM 0.33's ``backend_xgrammar.py``, xgrammar issue 945; checked: with
its compact separators it accepts ``{"a":1, "b":2}`` but not ``{"a":1,"b":2}`` for
``{"type": "object"}``); for the :class:`~hxpe.agent.schema.Extraction` schema both the pinned
llguidance 1.7.6 and xgrammar 0.2.8 refuse any whitespace between tokens (checked on the tiny Qwen
tokenizer). Free whitespace can loop until ``max_tokens``.
``SamplingParams`` always sets temperature, top_p, max_tokens and seed, so the model's
generation_config cannot change them.

Options (``agent.<stage>.options``) are ``vllm.LLM`` keywords: ``tensor_parallel_size`` (1 for the AWQ
model on one 80 GB GPU; 4 for bf16 in practice), ``max_model_len`` (8192; part of the cache key),
``max_num_seqs`` (32 fits the AWQ model's KV budget; send >= 256 requests per call, ``batch_size``),
``gpu_memory_utilization``, ``dtype``, ``quantization``, ``mm_processor_kwargs`` (describe: the
Qwen2-VL pixel limits ``{"min_pixels": 256*28*28, "max_pixels": 1280*28*28}`` by default, each
overridable alone; passed on as ``size={"shortest_edge", "longest_edge"}``, the form transformers
keeps after 5.23), ``structured_outputs_config`` (extract: ``{"backend": "guidance" | "xgrammar",
"disable_any_whitespace": bool}``), ``enforce_eager``, ``distributed_executor_backend`` ("mp" or
"ray"), ``pipeline_parallel_size``, ``download_dir``. :func:`settings_for` says which of them are in
the cache key. Every keyword sent to vLLM exists in the pinned version: the CPU tests' stand-in
refuses any other (:mod:`hxpe.environment.vllm_api`). vLLM is imported only here, when the engine is
built (it is CUDA-only and lives in its own venv).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from hxpe.agent import backend_base as base
from hxpe.agent.backend_hf import chat_messages, describe_messages
from hxpe.agent.config import DescribeConfig, ExtractConfig
from hxpe.agent.schema import Extraction

log = logging.getLogger(__name__)

DEFAULT_PIXELS = {"min_pixels": 256 * 28 * 28, "max_pixels": 1280 * 28 * 28}
# Two images per prompt and no video: vLLM reserves memory for the most items each modality allows.
MM_LIMITS = {"image": 2, "video": 0}
# The extractor's engine-level structured-output settings (part of its cache key).
STRUCTURED_DEFAULTS: dict[str, Any] = {"backend": "guidance", "disable_any_whitespace": True}
STRUCTURED_BACKENDS = ("guidance", "xgrammar")  # the two that honour disable_any_whitespace
ENGINE_DEFAULTS: dict[str, Any] = {"max_model_len": 8192, "tensor_parallel_size": 1}
KNOWN_OPTIONS = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "max_model_len",
    "max_num_seqs",
    "gpu_memory_utilization",
    "dtype",
    "quantization",
    "mm_processor_kwargs",
    "structured_outputs_config",
    "enforce_eager",
    "distributed_executor_backend",
    "download_dir",
)
# Options that only change speed or memory, not the text: left out of the cache key.
PERFORMANCE_ONLY = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "max_num_seqs",
    "gpu_memory_utilization",
    "enforce_eager",
    "distributed_executor_backend",
    "download_dir",
)


def over_defaults(
    options: dict[str, Any], name: str, defaults: Mapping[str, Any], note: str = ""
) -> dict[str, Any]:
    """The dict option ``name`` laid over ``defaults`` (each key overridable alone); a key that
    ``defaults`` lacks is an error (``note`` ends its message).

    >>> over_defaults({"o": {"b": 3}}, "o", {"a": 1, "b": 2})
    {'a': 1, 'b': 3}
    >>> over_defaults({"o": {"c": 3}}, "o", {"a": 1, "b": 2})
    Traceback (most recent call last):
    ValueError: vllm backend: o ['c'] are not supported; give ['a', 'b']
    """
    given = dict(options.get(name) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"vllm backend: {name} {unknown} are not supported; give {sorted(defaults)}{note}"
        )
    return {**defaults, **given}


def pixel_limits(options: dict[str, Any]) -> dict[str, int]:
    """The describer's Qwen2-VL pixel limits: ``mm_processor_kwargs`` over the defaults.

    >>> pixel_limits({"mm_processor_kwargs": {"max_pixels": 1000000}})
    {'min_pixels': 200704, 'max_pixels': 1000000}
    """
    return over_defaults(
        options, "mm_processor_kwargs", DEFAULT_PIXELS, note=" (the Qwen2-VL pixel limits)"
    )


def processor_size(pixels: dict[str, int]) -> dict[str, dict[str, int]]:
    """Pixel limits in the ``size`` form of the Qwen2-VL processors (``min_pixels``/``max_pixels``
    keywords are deprecated in transformers 5.x and removed in 5.23).

    >>> processor_size({"min_pixels": 4, "max_pixels": 9})
    {'size': {'shortest_edge': 4, 'longest_edge': 9}}
    """
    return {"size": {"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]}}


def structured_config(options: dict[str, Any]) -> dict[str, Any]:
    """The extractor's engine-level ``structured_outputs_config``: the option over the defaults,
    with an explicit backend that honours ``disable_any_whitespace``.

    >>> structured_config({})
    {'backend': 'guidance', 'disable_any_whitespace': True}
    >>> structured_config({"structured_outputs_config": {"backend": "xgrammar"}})
    {'backend': 'xgrammar', 'disable_any_whitespace': True}
    """
    out = over_defaults(options, "structured_outputs_config", STRUCTURED_DEFAULTS)
    if out["backend"] not in STRUCTURED_BACKENDS:
        raise ValueError(
            f"vllm backend: structured_outputs_config.backend {out['backend']!r}; use one of "
            f"{list(STRUCTURED_BACKENDS)} (vLLM honours disable_any_whitespace only with these, and "
            f"'auto' may pick another per release)"
        )
    return out


def settings_for(options: dict[str, Any], structured: bool = False) -> dict[str, Any]:
    """Engine settings that determine the output (part of the cache key): the options with their
    defaults filled in, less the performance-only ones. The describer's include its pixel limits
    (``mm_processor_kwargs``, defaults filled); the extractor's (``structured=True``) its
    engine-level structured-output settings (``structured_output``: backend and whitespace switch).

    >>> settings_for({"max_num_seqs": 32}, structured=True)
    {'max_model_len': 8192, 'structured_output': {'backend': 'guidance', 'disable_any_whitespace': True}}
    >>> settings_for({})
    {'max_model_len': 8192, 'mm_processor_kwargs': {'min_pixels': 200704, 'max_pixels': 1003520}}
    """
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise ValueError(f"vllm backend: unknown options {unknown}; known: {list(KNOWN_OPTIONS)}")
    wrong_stage = "mm_processor_kwargs" if structured else "structured_outputs_config"
    if wrong_stage in options:
        stage, other = ("extract", "describe") if structured else ("describe", "extract")
        raise ValueError(
            f"vllm backend: {wrong_stage} is an agent.{other} option; agent.{stage} has no use for it"
        )
    effective = {**ENGINE_DEFAULTS, **options}
    if not structured:
        effective["mm_processor_kwargs"] = pixel_limits(options)
    out = {k: v for k, v in sorted(effective.items()) if k not in PERFORMANCE_ONLY}
    if structured:
        out.pop("structured_outputs_config", None)
        out["structured_output"] = structured_config(options)
    return out


def import_vllm() -> Any:
    """The ``vllm`` module, or an error that says how to get it."""
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ImportError(
            "The vllm backend needs vLLM (CUDA only): create the GPU environment with "
            "`make gpu-env` and run the agent stages in it, or set agent.<stage>.backend to "
            "'transformers' (CPU/macOS) or 'replay' (reuse a cache). `make doctor` checks this."
        ) from err


def structured_output_kwargs(schema: dict[str, Any], sampling_module: Any = None) -> dict[str, Any]:
    """``SamplingParams`` keywords constraining output to ``schema``:
    ``structured_outputs=StructuredOutputsParams(json=schema)`` (vLLM >= 0.11). The backend and the
    whitespace switch are engine settings (:func:`structured_config`). Without that class: a loud
    error (never silently unconstrained)."""
    sp = sampling_module or importlib.import_module("vllm.sampling_params")
    if hasattr(sp, "StructuredOutputsParams"):
        return {"structured_outputs": sp.StructuredOutputsParams(json=schema)}
    version = getattr(importlib.import_module("vllm"), "__version__", "?")
    raise RuntimeError(
        f"vLLM {version} has no StructuredOutputsParams in vllm.sampling_params; cannot constrain "
        f"extraction to JSON. Install the vLLM version pinned in constraints-gpu.txt (make gpu-env)."
    )


def engine_kwargs(cfg: DescribeConfig | ExtractConfig, multimodal: bool) -> dict[str, Any]:
    """Keywords of ``vllm.LLM`` for a stage (defaults filled, the seed set): the describer's with its
    image limits and pixel limits, the extractor's with its ``structured_outputs_config``."""
    settings_for(cfg.options, structured=not multimodal)
    kwargs: dict[str, Any] = {
        "model": cfg.model_id,
        "revision": cfg.revision,
        "seed": cfg.seed,
        **ENGINE_DEFAULTS,
        **cfg.options,
    }
    if multimodal:
        kwargs["limit_mm_per_prompt"] = dict(MM_LIMITS)
        kwargs["mm_processor_kwargs"] = processor_size(pixel_limits(cfg.options))
    else:
        kwargs["structured_outputs_config"] = structured_config(cfg.options)
    return kwargs


def sampling_params(vllm: Any, sampling: base.Sampling, **extra: Any) -> Any:
    """``SamplingParams`` with every decoding setting explicit."""
    return vllm.SamplingParams(
        temperature=sampling.temperature,
        top_p=1.0,
        max_tokens=sampling.max_new_tokens,
        seed=sampling.seed,
        **extra,
    )


def _generations(outputs: Sequence[Any]) -> list[base.Generation]:
    return [base.Generation(o.outputs[0].text, o.outputs[0].finish_reason) for o in outputs]


class VllmDescriber:
    """Qwen2-VL on vLLM: two images per prompt, batched ``llm.generate``."""

    backend = "vllm"

    def __init__(self, vllm: Any, llm: Any, processor: Any, options: dict[str, Any]):
        self.vllm, self.llm, self.processor, self.options = vllm, llm, processor, options

    @classmethod
    def from_config(cls, cfg: DescribeConfig) -> VllmDescriber:
        from transformers import AutoProcessor

        vllm = import_vllm()
        kwargs = engine_kwargs(cfg, multimodal=True)
        processor = AutoProcessor.from_pretrained(
            cfg.model_id, revision=cfg.revision, **kwargs["mm_processor_kwargs"]
        )  # only its chat template is used here; vLLM's own copy processes the images
        log.info("starting vLLM: %s", {k: v for k, v in kwargs.items() if k != "model"})
        return cls(vllm, vllm.LLM(**kwargs), processor, cfg.options)

    def settings(self) -> dict[str, Any]:
        return settings_for(self.options, structured=False)

    def request(self, req: base.DescribeRequest) -> dict[str, Any]:
        """One ``llm.generate`` input: the chat-templated prompt and its images in order."""
        prompt = self.processor.apply_chat_template(
            describe_messages(req), tokenize=False, add_generation_prompt=True
        )
        return {"prompt": prompt, "multi_modal_data": {"image": req.images}}

    def describe(
        self, requests: Sequence[base.DescribeRequest], sampling: base.Sampling
    ) -> list[base.Generation]:
        params = sampling_params(self.vllm, sampling)
        outputs = self.llm.generate([self.request(r) for r in requests], params, use_tqdm=False)
        return _generations(outputs)


class VllmExtractor:
    """Qwen2.5 on vLLM with JSON-schema structured outputs."""

    backend = "vllm"

    def __init__(self, vllm: Any, llm: Any, tokenizer: Any, options: dict[str, Any]):
        self.vllm, self.llm, self.tokenizer, self.options = vllm, llm, tokenizer, options
        self.structured = structured_output_kwargs(
            Extraction.model_json_schema(), importlib.import_module("vllm.sampling_params")
        )

    @classmethod
    def from_config(cls, cfg: ExtractConfig) -> VllmExtractor:
        from transformers import AutoTokenizer

        vllm = import_vllm()
        kwargs = engine_kwargs(cfg, multimodal=False)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model_id, revision=cfg.revision)
        log.info("starting vLLM: %s", {k: v for k, v in kwargs.items() if k != "model"})
        return cls(vllm, vllm.LLM(**kwargs), tokenizer, cfg.options)

    def settings(self) -> dict[str, Any]:
        return settings_for(self.options, structured=True)

    def prompt(self, req: base.ExtractRequest) -> str:
        prompt: str = self.tokenizer.apply_chat_template(
            chat_messages(req), tokenize=False, add_generation_prompt=True
        )
        return prompt

    def extract(
        self, requests: Sequence[base.ExtractRequest], sampling: base.Sampling
    ) -> list[base.Generation]:
        params = sampling_params(self.vllm, sampling, **self.structured)
        outputs = self.llm.generate([self.prompt(r) for r in requests], params, use_tqdm=False)
        return _generations(outputs)


base.register_backend(
    base.Backend(
        "vllm",
        settings_for=settings_for,
        describer=VllmDescriber.from_config,
        extractor=VllmExtractor.from_config,
    )
)
