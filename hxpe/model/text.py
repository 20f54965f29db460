"""CLIP's text tower with learnable context tokens and deep prompts, and the tokenizer that lays
sentences out for them.

Token layout of every prompted sentence::

    [SOT] [P1..P_p] [C1..C_c] words... [EOT]

``P`` are dedicated deep-prompt slots (layout ``slots``; p = 0 in the authors' layout ``overwrite``),
``C`` learnable context slots (replaced once, at the input). Both start as the placeholder word "X".
A deep prompt of a block replaces the tokens right after SOT at that block's input: the ``P`` slots,
or (``overwrite``, both authors) the first context tokens (AnomalyCLIP) or words (AdaCLIP). Sentences longer than
CLIP's context lose the end of their explainable phrase (with a logged warning), never the rest.

Example (the ``P`` slots hold the placeholder "X", BPE id 343):
    >>> import open_clip
    >>> tok = PromptTokenizer(open_clip.get_tokenizer("ViT-L-14"), n_slots=4)
    >>> ids = tok(["damaged object."])
    >>> ids.shape, tok.room()
    (torch.Size([1, 77]), 71)
    >>> ids[0, :9].tolist()  # SOT, 4 slots, "damaged", "object", ".", EOT
    [49406, 343, 343, 343, 343, 13568, 14115, 269, 49407]
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class PromptTokenizer:
    """CLIP BPE tokenisation with ``n_slots`` placeholder tokens after SOT."""

    def __init__(self, tokenizer: object, n_slots: int, context_length: int = 77) -> None:
        for attr in ("encode", "decode", "sot_token_id", "eot_token_id"):
            if not hasattr(tokenizer, attr):
                raise TypeError(
                    f"Prompt tokenisation needs open_clip's SimpleTokenizer (CLIP BPE); "
                    f"{type(tokenizer).__name__} has no {attr!r}."
                )
        self.tokenizer = tokenizer
        self.n_slots = n_slots
        self.context_length = context_length
        self.placeholder = tokenizer.encode("X")[0]

    def room(self) -> int:
        """Word tokens a sentence can hold."""
        return self.context_length - 2 - self.n_slots

    def n_tokens(self, sentence: str) -> int:
        return len(self.tokenizer.encode(sentence))

    def __call__(self, sentences: list[str]) -> torch.Tensor:
        out = torch.zeros(len(sentences), self.context_length, dtype=torch.long)
        for i, s in enumerate(sentences):
            words = self.tokenizer.encode(s)
            if len(words) > self.room():
                raise ValueError(
                    f"Prompt {s[:60]!r}... has {len(words)} tokens; at most {self.room()} fit in "
                    f"CLIP's {self.context_length}-token context. Shorten the template."
                )
            ids = [self.tokenizer.sot_token_id, *[self.placeholder] * self.n_slots, *words]
            ids.append(self.tokenizer.eot_token_id)
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def fit_phrase(self, phrase: str, render: Callable[[str], list[str]]) -> str:
        """``phrase`` cut (at token boundaries) so that every sentence of ``render(phrase)`` fits."""
        longest = max(self.n_tokens(s) for s in render(phrase))
        over = longest - self.room()
        if over <= 0:
            return phrase
        ids = self.tokenizer.encode(phrase)
        cut = phrase
        while over > 0 and ids:
            ids = ids[: max(0, len(ids) - over)]
            cut = self.tokenizer.decode(ids).strip()
            over = max(self.n_tokens(s) for s in render(cut)) - self.room()
        log.warning(
            "Explainable phrase cut to CLIP's %d-token context: %r -> %r",
            self.context_length,
            phrase,
            cut,
        )
        return cut


class TextEncoder(nn.Module):
    """Runs an open_clip CLIP text tower with context and deep prompts (weights shared, frozen)."""

    def __init__(self, clip: nn.Module, prompt_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.prompt_dtype = prompt_dtype  # deep prompts rounded through it (the authors' .half())
        if getattr(clip, "text_pool_type", "argmax") != "argmax":
            raise ValueError(
                "Only CLIP text towers pooled at the EOT token (argmax) are supported."
            )
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.causal = _is_causal(clip.attn_mask)

    @property
    def width(self) -> int:
        return self.token_embedding.embedding_dim

    def forward(
        self,
        tokens: torch.Tensor,
        context: torch.Tensor | None = None,
        deep: list[torch.Tensor | None] | None = None,
        n_slots: int = 0,
        trim: bool = True,
    ) -> torch.Tensor:
        """L2-normalised sentence embeddings [S, D].

        Args:
            tokens: [S, 77] from :class:`PromptTokenizer`.
            context: [S, c, width] learnable context placed after the ``n_slots`` deep-prompt slots.
            deep: per block (0-based) tokens [S, p, width] replacing positions 1..p at that block's
                input, or None for a block without a deep prompt.
            trim: run only up to the batch's last EOT token (exact under a causal mask: no
                position before EOT attends to the padding after it); False = the full context.
        """
        if trim and self.causal:
            length = int(tokens.argmax(dim=-1).max()) + 1
            tokens = tokens[:, :length]
        length = tokens.shape[1]
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.token_embedding(tokens)
        if context is not None and context.shape[1]:
            start = 1 + n_slots
            x = torch.cat([x[:, :start], context.to(x.dtype), x[:, start + context.shape[1] :]], 1)
        x = x + self.positional_embedding[:length].to(x.dtype)
        for i, block in enumerate(self.transformer.resblocks):
            if deep and i < len(deep) and deep[i] is not None:
                d = deep[i] if self.prompt_dtype is None else deep[i].to(self.prompt_dtype)
                x = torch.cat([x[:, :1], d.to(x.dtype), x[:, 1 + d.shape[1] :]], dim=1)
            x = block(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
        proj = self.text_projection
        x = proj(x) if isinstance(proj, nn.Module) else x @ proj
        return F.normalize(x, dim=-1)


def _is_causal(mask: torch.Tensor | None) -> bool:
    """Whether ``mask`` is CLIP's causal mask (−inf strictly above the diagonal, 0 elsewhere)."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.equal(torch.isneginf(mask), upper) and (mask[~upper] == 0).all())
