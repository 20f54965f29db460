"""Small fixtures for the agent's tests and examples: a generated dataset index with planted defects.

The images are crops of scikit-image's real ``brick`` photo (bundled offline); anomalous ones get a
dark scratch or a red spot drawn at a known place.

Example:
    >>> import tempfile
    >>> index = planted_index(tempfile.mkdtemp())
    >>> index.frame.groupby(["split", "defect_type"]).size().to_dict()
    {('test', 'good'): 4, ('test', 'scratch'): 2, ('test', 'spot'): 2, ('train', 'good'): 2}
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from hxpe.data.index import DatasetIndex, make_image_id, validate_frame
from hxpe.hashing import file_sha256

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def texture_crop(y: int, x: int, size: int = 128) -> Image.Image:
    """A ``size`` px crop of the brick photo at half resolution, starting at pixel (y, x)."""
    from skimage import data

    img = data.brick()
    crop = img[y : y + 2 * size : 2, x : x + 2 * size : 2]
    return Image.fromarray(np.stack([crop] * 3, -1).astype(np.uint8))


def plant_scratch(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A dark 3 px line from (x0, y0) to (x1, y1)."""
    out = img.copy()
    ImageDraw.Draw(out).line(list(box), fill=(15, 15, 15), width=3)
    return out


def plant_spot(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A red filled ellipse in ``box``."""
    out = img.copy()
    ImageDraw.Draw(out).ellipse(list(box), fill=(200, 40, 30))
    return out


def planted_index(root: str | Path, name: str = "planted", n_good: int = 2) -> DatasetIndex:
    """A two-class dataset in MVTec layout: one train normal, ``n_good`` test normals, two defects."""
    root = Path(root)
    rows = []

    def add(cls: str, split: str, defect: str, stem: str, img: Image.Image) -> None:
        rel = f"{cls}/{split}/{defect}/{stem}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
        label = int(defect != "good")
        rows.append(
            {
                "image_id": make_image_id(name, cls, split, defect, rel),
                "dataset": name,
                "cls": cls,
                "split": split,
                "label": label,
                "defect_type": defect,
                "image": rel,
                "mask": "",
                "sha256": file_sha256(root / rel),
            }
        )

    for cls, (y0, x0) in {"wall": (0, 0), "tile": (40, 200)}.items():
        add(cls, "train", "good", "000", texture_crop(y0, x0))
        for i in range(n_good):
            add(cls, "test", "good", f"{i:03d}", texture_crop(y0 + 2 * i, x0 + 3 * i))
        add(cls, "test", "scratch", "000", plant_scratch(texture_crop(y0, x0), (10, 15, 45, 30)))
        add(cls, "test", "spot", "000", plant_spot(texture_crop(y0, x0), (90, 90, 104, 104)))
    return DatasetIndex(
        name=name, root=root, frame=validate_frame(pd.DataFrame(rows)), kind="mvtec"
    )


# -- tiny random Qwen models (for the transformers and vLLM backends' tests) ------------------------
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
CHAT_TEMPLATE_FILE = Path(__file__).resolve().parent / "templates" / "qwen_chat_template.jinja"


def tiny_qwen_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in-process, with Qwen's special tokens and chat format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hxpe.agent.templates import load_template

    corpus = [load_template(t).text for t in ("describe_v1", "describe_noref_v1", "extract_v1")]
    corpus += ["No anomaly. A small dark scratch in the upper left of the image."] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE_FILE.read_text(),
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The id of each of Qwen's special tokens in ``tokenizer`` (one id per token)."""
    ids: dict[str, int] = {}
    for token in QWEN_SPECIAL_TOKENS:
        i = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(i, int):
            raise ValueError(f"the tokenizer maps {token!r} to the ids {i}; it must be one token")
        ids[token] = i
    return ids


def _stop_ids(eos: int, vocab_size: int, stop_every: int) -> int | list[int]:
    """``eos``, plus every ``stop_every``-th token id when > 0: a random model's greedy output then
    ends after a few tokens instead of running to ``max_new_tokens`` (used by the dry run)."""
    if stop_every <= 0:
        return eos
    return sorted({eos, *range(0, vocab_size, stop_every)})


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's multimodal RoPE split of ``head_dim / 2`` frequencies into (time, height, width).

    >>> mrope_section(16), mrope_section(64)
    ([2, 3, 3], [8, 12, 12])
    """
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def save_tiny_qwen2_vl(
    out_dir: str | Path, hidden: int = 32, seed: int = 0, stop_every: int = 0
) -> Path:
    """A random-init Qwen2-VL (1 text layer, 1 vision block, 2 heads of ``hidden / 2``) and its real
    processor, saved. ``hidden=128`` gives head size 64, which every vLLM attention backend takes."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out_dir)
    tokenizer = tiny_qwen_tokenizer()
    ids = special_token_ids(tokenizer)
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_section(hidden // 2),
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "embed_dim": hidden,
            "hidden_size": hidden,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = _stop_ids(
        ids["<|im_end|>"], model.config.get_text_config().vocab_size, stop_every
    )
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    pixels = {"min_pixels": 4 * 28 * 28, "max_pixels": 16 * 28 * 28}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE_FILE.read_text(),
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_tiny_qwen2(
    out_dir: str | Path, hidden: int = 32, seed: int = 0, stop_every: int = 0
) -> Path:
    """A random-init Qwen2 causal LM (1 layer) with the tiny tokenizer, saved."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    tokenizer = tiny_qwen_tokenizer()
    ids = special_token_ids(tokenizer)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = _stop_ids(ids["<|im_end|>"], len(tokenizer), stop_every)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


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
    from hxpe.environment.vllm_api import llm_keywords, load_snapshot

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
