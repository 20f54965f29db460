"""Phrase length in CLIP tokens, counted with the BPE tokenizer of the configured CLIP
(``open_clip.get_tokenizer(model.clip.model_name)``; the paper model's by default).

Example:
    >>> count_clip_tokens("small dark scratch on the upper left surface")
    8
    >>> fit_phrase("a b c d e", max_tokens=3)
    ('a b c', True)
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hxpe.model.clip_tower import ClipConfig

log = logging.getLogger(__name__)

CLIP_TOKENIZER_MODEL = "ViT-L-14-336-quickgelu"


class BPETokenizer(Protocol):
    """What the phrase budget needs of a CLIP tokenizer (OpenAI CLIP's ``SimpleTokenizer``)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@functools.lru_cache(maxsize=8)
def _tokenizer(model_name: str, config_file: str | None) -> BPETokenizer:
    import open_clip

    from hxpe.paths import resolve

    if config_file:
        open_clip.add_model_config(resolve(config_file))
    tok: BPETokenizer = open_clip.get_tokenizer(model_name)
    if not (hasattr(tok, "encode") and hasattr(tok, "decode")):
        raise TypeError(
            f"The tokenizer of CLIP {model_name!r} ({type(tok).__name__}) has no encode/decode; "
            f"the phrase budget needs a BPE tokenizer like OpenAI CLIP's."
        )
    return tok


def clip_tokenizer(clip: ClipConfig | None = None) -> BPETokenizer:
    """The tokenizer of ``clip`` (``model.clip``; None = the paper's CLIP), loaded once per model."""
    if clip is None:
        return _tokenizer(CLIP_TOKENIZER_MODEL, None)
    return _tokenizer(clip.model_name, clip.config_file)


def count_clip_tokens(text: str, clip: ClipConfig | None = None) -> int:
    """Number of BPE tokens of ``text`` (without CLIP's start/end tokens)."""
    return len(clip_tokenizer(clip).encode(text))


def fit_phrase(text: str, max_tokens: int, clip: ClipConfig | None = None) -> tuple[str, bool]:
    """``text`` cut to at most ``max_tokens`` CLIP tokens; the flag says whether it was cut."""
    tok = clip_tokenizer(clip)
    ids = tok.encode(text)
    if len(ids) <= max_tokens:
        return text, False
    short = tok.decode(ids[:max_tokens]).strip()
    log.warning(
        "phrase has %d CLIP tokens (limit %d); truncated to %r", len(ids), max_tokens, short
    )
    return short, True
