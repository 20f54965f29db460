"""The ``vllm`` backend: the GPU default (Qwen2-VL-72B-Instruct-AWQ describes, Qwen2.5-7B-Instruct
extracts), each stage in its own process.

Describe: the prompt is rendered by the HF processor's chat template (one
``<|vision_start|><|image_pad|><|vision_end|>`` per image) and sent with
``multi_modal_data={"image": [reference, test]}`` through ``llm.generate``; the engine is built with
``limit_mm_per_prompt={"image": 2, "video": 0}`` (left out, video defaults to 999 items and vLLM
profiles memory with a dummy video, shrinking the KV cache). Extract: the tokenizer's chat template,
plus structured outputs (the JSON schema of :class:`~hxpe.agent.schema.Extraction`, compact: no
whitespace between tokens, which otherwise can loop until ``max_tokens``) through
:func:`structured_output_kwargs`, a shim over vLLM's two APIs that fails loudly when neither exists. ``SamplingParams`` always sets
temperature, top_p, max_tokens and seed, so the model's generation_config cannot change them.

Options (``agent.<stage>.options``) are ``vllm.LLM`` keywords: ``tensor_parallel_size`` (1 for the AWQ
model on one 80 GB GPU; 4 for bf16 in practice), ``max_model_len`` (8192; part of the cache key),
``max_num_seqs`` (32 fits the AWQ model's KV budget; send >= 256 requests per call, ``batch_size``),
``gpu_memory_utilization``, ``dtype``, ``quantization``, ``mm_processor_kwargs`` (default
``{"min_pixels": 256*28*28, "max_pixels": 1280*28*28}``), ``enforce_eager``,
``distributed_executor_backend`` ("mp" or "ray"), ``pipeline_parallel_size``, ``download_dir``.
vLLM is imported only here, when the engine is built (it is CUDA-only and lives in its own venv).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Any

from hxpe.agent.backend_base import (
    Backend,
    DescribeRequest,
    ExtractRequest,
    Generation,
    Sampling,
    register_backend,
)
from hxpe.agent.backend_hf import chat_messages
from hxpe.agent.config import DescribeConfig, ExtractConfig
from hxpe.agent.schema import Extraction

log = logging.getLogger(__name__)

DEFAULT_PIXELS = {"min_pixels": 256 * 28 * 28, "max_pixels": 1280 * 28 * 28}
# Two images per prompt and no video: vLLM reserves memory for the most items each modality allows.
MM_LIMITS = {"image": 2, "video": 0}
# Structured JSON without free whitespace (part of the extractor's cache key).
STRUCTURED_OPTIONS = {"disable_any_whitespace": True}
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


def settings_for(options: dict[str, Any], structured: bool = False) -> dict[str, Any]:
    """Engine settings that determine the output (part of the cache key): the options with their
    defaults filled in (``max_model_len`` included), less the performance-only ones; for the
    extractor (``structured=True``) also the structured-output switches.

    >>> settings_for({"max_num_seqs": 32}, structured=True)
    {'max_model_len': 8192, 'structured_output': {'disable_any_whitespace': True}}
    """
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise ValueError(f"vllm backend: unknown options {unknown}; known: {list(KNOWN_OPTIONS)}")
    effective = {**ENGINE_DEFAULTS, **options}
    out = {k: v for k, v in sorted(effective.items()) if k not in PERFORMANCE_ONLY}
    if structured:
        out["structured_output"] = dict(STRUCTURED_OPTIONS)
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
    """``SamplingParams`` keywords constraining output to ``schema``, for whichever API vLLM has.

    vLLM >= 0.11: ``structured_outputs=StructuredOutputsParams(json=...)``; up to 0.11:
    ``guided_decoding=GuidedDecodingParams(json=...)``. Neither: a loud error (never silently
    unconstrained).
    """
    sp = sampling_module or importlib.import_module("vllm.sampling_params")
    if hasattr(sp, "StructuredOutputsParams"):
        return {"structured_outputs": sp.StructuredOutputsParams(json=schema, **STRUCTURED_OPTIONS)}
    if hasattr(sp, "GuidedDecodingParams"):
        return {"guided_decoding": sp.GuidedDecodingParams(json=schema, **STRUCTURED_OPTIONS)}
    version = getattr(importlib.import_module("vllm"), "__version__", "?")
    raise RuntimeError(
        f"vLLM {version} has neither StructuredOutputsParams nor GuidedDecodingParams in "
        f"vllm.sampling_params; cannot constrain extraction to JSON. Install the vLLM version "
        f"pinned in environment.yml (make gpu-env)."
    )


def engine_kwargs(cfg: DescribeConfig | ExtractConfig, multimodal: bool) -> dict[str, Any]:
    """Keywords of ``vllm.LLM`` for a stage (defaults filled, the seed set)."""
    settings_for(cfg.options)
    kwargs: dict[str, Any] = {
        "model": cfg.model_id,
        "revision": cfg.revision,
        "seed": cfg.seed,
        **ENGINE_DEFAULTS,
        **cfg.options,
    }
    if multimodal:
        kwargs["limit_mm_per_prompt"] = dict(MM_LIMITS)
        kwargs.setdefault("mm_processor_kwargs", dict(DEFAULT_PIXELS))
    return kwargs


def sampling_params(vllm: Any, sampling: Sampling, **extra: Any) -> Any:
    """``SamplingParams`` with every decoding setting explicit."""
    return vllm.SamplingParams(
        temperature=sampling.temperature,
        top_p=1.0,
        max_tokens=sampling.max_new_tokens,
        seed=sampling.seed,
        **extra,
    )


def _generations(outputs: Sequence[Any]) -> list[Generation]:
    return [Generation(o.outputs[0].text, o.outputs[0].finish_reason) for o in outputs]


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
        )
        log.info("starting vLLM: %s", {k: v for k, v in kwargs.items() if k != "model"})
        return cls(vllm, vllm.LLM(**kwargs), processor, cfg.options)

    def settings(self) -> dict[str, Any]:
        return settings_for(self.options)

    def request(self, req: DescribeRequest) -> dict[str, Any]:
        """One ``llm.generate`` input: the chat-templated prompt and its images in order."""
        images = [req.image] if req.reference is None else [req.reference, req.image]
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": req.prompt}]
        prompt = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return {"prompt": prompt, "multi_modal_data": {"image": images}}

    def describe(self, requests: Sequence[DescribeRequest], sampling: Sampling) -> list[Generation]:
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

    def prompt(self, req: ExtractRequest) -> str:
        return self.tokenizer.apply_chat_template(
            chat_messages(req), tokenize=False, add_generation_prompt=True
        )

    def extract(self, requests: Sequence[ExtractRequest], sampling: Sampling) -> list[Generation]:
        params = sampling_params(self.vllm, sampling, **self.structured)
        outputs = self.llm.generate([self.prompt(r) for r in requests], params, use_tqdm=False)
        return _generations(outputs)


register_backend(
    Backend(
        "vllm",
        settings_for=settings_for,
        describer=VllmDescriber.from_config,
        extractor=VllmExtractor.from_config,
    )
)
