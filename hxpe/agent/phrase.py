"""Phrase length in CLIP tokens, counted with open_clip's real BPE tokenizer (ships in the wheel).

Example:
    >>> count_clip_tokens("small dark scratch on the upper left surface")
    8
    >>> fit_phrase("a b c d e", max_tokens=3)
    ('a b c', True)
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)

CLIP_TOKENIZER_MODEL = "ViT-L-14-336-quickgelu"


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """The CLIP ``SimpleTokenizer`` of the HXPE backbone (offline; loaded once per process)."""
    import open_clip

    return open_clip.get_tokenizer(CLIP_TOKENIZER_MODEL)


def count_clip_tokens(text: str) -> int:
    """Number of BPE tokens of ``text`` (without CLIP's start/end tokens)."""
    return len(clip_tokenizer().encode(text))


def fit_phrase(text: str, max_tokens: int) -> tuple[str, bool]:
    """``text`` cut to at most ``max_tokens`` CLIP tokens; the flag says whether it was cut."""
    tok = clip_tokenizer()
    ids = tok.encode(text)
    if len(ids) <= max_tokens:
        return text, False
    short = tok.decode(ids[:max_tokens]).strip()
    log.warning(
        "phrase has %d CLIP tokens (limit %d); truncated to %r", len(ids), max_tokens, short
    )
    return short, True
