"""Tiny random-init Qwen2 and Qwen2-VL checkpoints, saved as real ``from_pretrained`` folders with a
byte-level BPE tokenizer trained in-process on the agent's own templates and Qwen's special tokens
and chat template: what the dry run (:mod:`hxpe.dryrun`), ``make gpu-smoke`` and the agent's tests
load through the real transformers and vLLM code paths when the 72B/7B weights are not at hand.
Their outputs are whatever random weights produce; nothing here stands in for a model's answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

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
