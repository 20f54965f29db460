"""The ``transformers`` backend: the CPU/macOS fallback for any Qwen2-VL / Qwen2.5-VL (describe) or
Qwen2.5 (extract) checkpoint, a hub id or a local directory.

Describe: ``AutoProcessor`` + ``AutoModelForImageTextToText``; one user message holding the reference
image, the test image and the prompt, rendered by the processor's chat template; greedy ``generate``
(sampling with a fixed seed on retries). Extract: ``AutoTokenizer`` + ``AutoModelForCausalLM`` with the
tokenizer's chat template; the output is validated by :func:`hxpe.agent.parsing.parse_extraction` and
retried a bounded number of times (plain ``generate`` has no constrained decoding).

Options (``agent.<stage>.options``): ``dtype`` ("auto", "float32", "bfloat16", "float16"), ``device``
("cpu", "cuda", "mps"; default cuda when available), and for describe ``min_pixels``/``max_pixels``
(image-size bounds of the Qwen2-VL processor). AWQ/GPTQ checkpoints need CUDA kernels: on CPU use a
small bf16/fp32 model (e.g. Qwen/Qwen2-VL-2B-Instruct) and record that deviation.
"""

from __future__ import annotations

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
from hxpe.agent.config import DescribeConfig, ExtractConfig

log = logging.getLogger(__name__)

KNOWN_OPTIONS = ("dtype", "device", "min_pixels", "max_pixels")
KEY_OPTIONS = ("dtype", "min_pixels", "max_pixels")  # the ones that change outputs


def settings_for(options: dict[str, Any], structured: bool = False) -> dict[str, Any]:
    """The backend's settings (part of the cache key); unknown options are errors. ``structured`` (for
    the extractor) changes nothing here."""
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise ValueError(f"transformers backend: unknown options {unknown}; known: {KNOWN_OPTIONS}")
    return {k: options.get(k) for k in KEY_OPTIONS}


def _device(options: dict[str, Any]) -> str:
    import torch

    return options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(options: dict[str, Any]) -> Any:
    import torch

    name = options.get("dtype", "auto")
    return name if name == "auto" else getattr(torch, name)


def load_pretrained(
    cfg: DescribeConfig | ExtractConfig, model_class: Any, companion_class: Any, **kwargs: Any
) -> tuple[Any, Any]:
    """``(model, companion)`` of ``cfg.model_id`` at ``cfg.revision``: the model (``model_class``)
    in eval mode on its device and dtype, its processor or tokenizer (``companion_class``, with
    ``kwargs``); unknown options fail before anything loads."""
    settings_for(cfg.options)
    log.info("loading %s (revision %s) with transformers", cfg.model_id, cfg.revision)
    companion = companion_class.from_pretrained(cfg.model_id, revision=cfg.revision, **kwargs)
    model = model_class.from_pretrained(
        cfg.model_id, revision=cfg.revision, dtype=_dtype(cfg.options)
    )
    return model.to(_device(cfg.options)).eval(), companion


def generate(model: Any, inputs: dict[str, Any], tokenizer: Any, sampling: Sampling) -> Generation:
    """One ``generate`` call; the text after the prompt and why it stopped."""
    import torch

    kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "do_sample": False}
    if sampling.temperature > 0:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=1.0, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    torch.manual_seed(sampling.seed)
    with torch.inference_mode():
        ids = model.generate(**inputs, **kwargs)
    new = ids[0, inputs["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    stopped = len(new) < sampling.max_new_tokens or (new and new[-1] in eos_ids)
    return Generation(
        tokenizer.decode(new, skip_special_tokens=True), "stop" if stopped else "length"
    )


class _OnTransformers:
    """What both stages share: the backend's name and the settings of the stage's options."""

    backend = "transformers"
    options: dict[str, Any]

    def settings(self) -> dict[str, Any]:
        return settings_for(self.options)


class HFDescriber(_OnTransformers):
    """A Qwen2-VL-family model on transformers (one request at a time)."""

    def __init__(self, model: Any, processor: Any, options: dict[str, Any]):
        self.model, self.processor, self.options = model, processor, options

    @classmethod
    def from_config(cls, cfg: DescribeConfig) -> HFDescriber:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        pixels = {k: cfg.options[k] for k in ("min_pixels", "max_pixels") if k in cfg.options}
        model, processor = load_pretrained(
            cfg, AutoModelForImageTextToText, AutoProcessor, **pixels
        )
        return cls(model, processor, cfg.options)

    def inputs(self, req: DescribeRequest) -> Any:
        """The processor's tensors for one request (prompt rendered by the chat template)."""
        text = self.processor.apply_chat_template(
            describe_messages(req), tokenize=False, add_generation_prompt=True
        )
        return self.processor(text=[text], images=req.images, return_tensors="pt").to(
            self.model.device
        )

    def describe(self, requests: Sequence[DescribeRequest], sampling: Sampling) -> list[Generation]:
        return [
            generate(self.model, self.inputs(req), self.processor.tokenizer, sampling)
            for req in requests
        ]


class HFExtractor(_OnTransformers):
    """A Qwen2.5-family causal LM on transformers (one request at a time)."""

    def __init__(self, model: Any, tokenizer: Any, options: dict[str, Any]):
        self.model, self.tokenizer, self.options = model, tokenizer, options

    @classmethod
    def from_config(cls, cfg: ExtractConfig) -> HFExtractor:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tokenizer = load_pretrained(cfg, AutoModelForCausalLM, AutoTokenizer)
        return cls(model, tokenizer, cfg.options)

    def extract(self, requests: Sequence[ExtractRequest], sampling: Sampling) -> list[Generation]:
        out = []
        for req in requests:
            inputs = self.tokenizer.apply_chat_template(
                chat_messages(req),
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            ).to(self.model.device)
            out.append(generate(self.model, inputs, self.tokenizer, sampling))
        return out


def describe_messages(req: DescribeRequest) -> list[dict[str, Any]]:
    """The describer's chat: Image 1 (reference, when there is one), Image 2 (test), then the
    prompt; the images themselves go beside it, in the order of ``req.images``."""
    images = [{"type": "image"} for _ in req.images]
    return [{"role": "user", "content": [*images, {"type": "text", "text": req.prompt}]}]


def chat_messages(req: ExtractRequest) -> list[dict[str, str]]:
    """System message (when the template has one) and the user prompt."""
    system = [{"role": "system", "content": req.system}] if req.system else []
    return [*system, {"role": "user", "content": req.prompt}]


register_backend(
    Backend(
        "transformers",
        settings_for=settings_for,
        describer=HFDescriber.from_config,
        extractor=HFExtractor.from_config,
    )
)
