"""CLIP's two towers, run block by block so that the bases' prompts, the DINOv2 key bias and v-v
attention enter without a modified copy of CLIP (the open_clip modules are used as they are).

* **Vision tower** (:class:`VisualEncoder`): ``conv1``, ``ln_pre``, the residual blocks, ``ln_post``
  and ``proj``; positional embeddings are interpolated to the input grid on the fly, never written
  back; the patch tokens of the selected layers come back in the joint space and raw.
* **Attention surgery**: every block's attention is computed from the frozen
  ``nn.MultiheadAttention``'s own weights (:func:`multihead_attention`), with an additive **key bias**
  (the DINOv2 attention prompt in mode ``attn_bias``) and, where a base attaches it, **v-v attention**
  (AnomalyCLIP's DPAM, CLIP-Surgery style: queries and keys replaced by the values, a second output
  stream; :func:`attach_vv_attention`).
* **Text tower** (:class:`TextEncoder`) with learnable context tokens and deep prompts, and the
  tokenizer that lays sentences out for them (:class:`PromptTokenizer`).

Token layout of every prompted sentence::

    [SOT] [P1..P_p] [C1..C_c] words... [EOT]

``P`` are dedicated deep-prompt slots (layout ``slots``; p = 0 in the authors' layout ``overwrite``),
``C`` learnable context slots (replaced once, at the input). Both start as the placeholder word "X".
A deep prompt of a block replaces the tokens right after SOT at that block's input: the ``P`` slots,
or (``overwrite``, both authors) the first context tokens (AnomalyCLIP) or words (AdaCLIP). Sentences
longer than CLIP's context lose the end of their explainable phrase (with a logged warning), never the
rest.

Example (the tiny CLIP: 4 blocks, patch 14, joint space of 32 dimensions):
    >>> from hxpe.model.loading import load_clip
    >>> from hxpe.model.tiny import tiny_model_config
    >>> clip, _ = load_clip(tiny_model_config().clip)
    >>> enc = VisualEncoder(clip.visual, layers=[2, 4])
    >>> feats = enc(torch.rand(2, 3, 112, 112))  # [0, 1] RGB; normalised inside
    >>> feats.grid, [tuple(p.shape) for p in feats.patches], tuple(feats.cls.shape)
    ((8, 8), [(2, 64, 32), (2, 64, 32)], (2, 32))

The attention from the module's own weights is the module's (``mha`` called as usual):
    >>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    >>> x = torch.randn(1, 5, 8)
    >>> torch.allclose(multihead_attention(mha, x), mha(x, x, x, need_weights=False)[0], atol=1e-6)
    True

The ``P`` slots hold the placeholder "X", BPE id 343:
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
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hxpe.limits import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

log = logging.getLogger(__name__)

# open_clip ships no type information: its modules (the towers and their residual blocks) are Any
# to the type checker; the classes here name the attributes they use in their docstrings.
OpenClipModule = Any


class ClipTokenizer(Protocol):
    """open_clip's ``SimpleTokenizer`` (CLIP BPE), as :class:`PromptTokenizer` uses it."""

    sot_token_id: int
    eot_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...


class ClipConfig(BaseModel):
    """CLIP: the backbone (open_clip), its input size and the layers whose patch tokens are used."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field("ViT-L-14-336-quickgelu", description="open_clip model name.")
    pretrained: str | None = Field(
        "openai",
        description="open_clip pretrained tag, or a local weights file (.safetensors: the demo's "
        "trained backbones); null = random init.",
    )
    config_file: str | None = Field(
        None,
        description="Extra open_clip JSON model config (tiny test models), registered before build.",
    )
    image_size: int = Field(
        518,
        ge=MIN_IMAGE_SIZE,
        le=MAX_IMAGE_SIZE,
        description="Input resolution; positional embeddings interpolated.",
    )
    layers: list[int] = Field(
        default_factory=lambda: [6, 12, 18, 24],
        description="1-based blocks whose patch tokens are used.",
    )
    activation: Literal["model", "quick_gelu", "gelu"] = Field(
        "model",
        description="MLP activation of both towers: the open_clip config's own (QuickGELU for the "
        "OpenAI weights), or forced. 'gelu' reproduces AdaCLIP as released (custom_clip.py builds "
        "CLIP without quick_gelu).",
    )


# ------------------------------------------------------------ vision tower

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisualFeatures:
    """What the vision tower gives the bases.

    Attributes:
        cls: joint-space CLS ``ln_post(x[0]) @ proj`` [B, D] of the q-k stream.
        patches: per selected layer, joint-space patch tokens ``ln_post(t) @ proj`` [B, N, D] (the
            v-v stream where v-v attention is attached).
        grid: (h, w) patch grid.
        raw_patches: per selected layer, the raw block output patch tokens [B, N, C] (same stream).
        cls_token: the raw final CLS token [B, C] of the q-k stream (before ``ln_post``).
    """

    cls: torch.Tensor
    patches: list[torch.Tensor]
    grid: tuple[int, int]
    raw_patches: list[torch.Tensor] | None = None
    cls_token: torch.Tensor | None = None


def interpolate_positions(
    pos: torch.Tensor, grid: tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """CLIP positional embeddings [1 + g*g, C] resized (``mode``, align_corners=False) to ``grid``;
    a new tensor (the weights are never written back)."""
    n = pos.shape[0] - 1
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"positional embedding of {n} patches is not a square grid")
    if grid == (side, side):
        return pos
    patch = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch.float(), size=grid, mode=mode, align_corners=False)
    patch = patch.to(pos.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([pos[:1], patch], dim=0)


class VisualEncoder(nn.Module):
    """Runs an open_clip ``VisionTransformer`` block by block (its ``conv1``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer.resblocks``, ``ln_post`` and ``proj``).

    Args:
        visual: the (frozen) open_clip vision tower.
        layers: 1-based block numbers whose patch tokens are returned.
        pos_interpolation: positional-embedding resize to non-native grids (bilinear, bicubic).
        prompt_dtype: prompt tokens are rounded through this dtype before they enter the stream
            (AdaCLIP's ``.half()`` casts); None = no rounding.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        visual: OpenClipModule,
        layers: list[int],
        pos_interpolation: str = "bicubic",
        prompt_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if (
            getattr(visual, "attn_pool", None) is not None
            or getattr(visual, "pool_type", "tok") != "tok"
        ):
            raise ValueError(
                "Only class-token CLIP vision towers are supported (no attentional pool)."
            )
        n_blocks = len(visual.transformer.resblocks)
        if max(layers) > n_blocks:
            raise ValueError(
                f"model.clip.layers {layers} asks for block {max(layers)}, but this CLIP has "
                f"{n_blocks} blocks."
            )
        self.visual = visual
        self.layers = list(layers)
        self.pos_interpolation = pos_interpolation
        self.prompt_dtype = prompt_dtype
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def blocks(self) -> OpenClipModule:
        """The residual blocks (an ``nn.ModuleList`` of open_clip ``ResidualAttentionBlock``)."""
        return self.visual.transformer.resblocks

    @property
    def width(self) -> int:
        return int(self.visual.conv1.out_channels)

    @property
    def patch_size(self) -> int:
        return int(self.visual.conv1.kernel_size[0])

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        return size[0] // self.patch_size, size[1] // self.patch_size

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB to CLIP's input statistics."""
        return (images - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + class + positional embeddings, ``ln_pre``: [B, 1 + N, C]."""
        v = self.visual
        x = v.conv1(self.normalize(images))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = interpolate_positions(v.positional_embedding, grid, self.pos_interpolation)
        x = x + pos.to(x.dtype)
        out: torch.Tensor = v.ln_pre(x)
        return out

    def to_joint(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``proj``: vision width to the joint image-text space."""
        joint: torch.Tensor = self.visual.ln_post(tokens) @ self.visual.proj
        return joint

    def forward(
        self,
        images: torch.Tensor,
        prompts: list[torch.Tensor] | None = None,
        key_bias: torch.Tensor | None = None,
        bias_blocks: frozenset[int] = frozenset(),
    ) -> VisualFeatures:
        """Encode [0, 1] images [B, 3, H, W].

        Args:
            prompts: per prompted block (0-based, from the first) prompt tokens [B, P, C]: appended
                after the patches at block 0, replacing the previous ones after.
            key_bias: [B, N] additive attention bias on the patch keys, used in ``bias_blocks``.
        """
        x = self.embed(images)
        n_patch = x.shape[1] - 1
        grid = self.grid((images.shape[-2], images.shape[-1]))
        n_prompt = prompts[0].shape[1] if prompts else 0
        vv: torch.Tensor | None = None
        taken = []
        for i, block in enumerate(self.blocks):
            if prompts and i < len(prompts):
                p = prompts[i] if self.prompt_dtype is None else prompts[i].to(self.prompt_dtype)
                x = _put_prompts(x, p, n_patch, first=i == 0)
                vv = None if vv is None else _put_prompts(vv, p, n_patch, first=i == 0)
            bias = None
            if key_bias is not None and i in bias_blocks:
                bias = F.pad(key_bias, (1, n_prompt))
            h = block.ln_1(x)
            if isinstance(block.attn, DualPathAttention):
                attn, attn_vv = block.attn.dual(h, bias)
                vv = (x if vv is None else vv) + block.ls_1(attn_vv)
            else:
                attn = multihead_attention(block.attn, h, bias)
            x = x + block.ls_1(attn)
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
            if i + 1 in self.layers:
                stream = x if vv is None else vv
                taken.append(stream[:, 1 : 1 + n_patch])
        return VisualFeatures(
            cls=self.to_joint(x[:, 0]),
            patches=[self.to_joint(t) for t in taken],
            grid=grid,
            raw_patches=taken,
            cls_token=x[:, 0],
        )


def _put_prompts(x: torch.Tensor, prompts: torch.Tensor, n_patch: int, first: bool) -> torch.Tensor:
    body = x if first else x[:, : 1 + n_patch]
    return torch.cat([body, prompts.to(x.dtype)], dim=1)


# ------------------------------------------------------------ attention surgery


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.view(b, n, heads, c // heads).transpose(1, 2)


def multihead_attention(
    mha: nn.MultiheadAttention,
    x: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    value_value: bool = False,
) -> torch.Tensor:
    """Self-attention of ``x`` [B, L, C] with ``mha``'s weights.

    ``key_bias`` [B, L] is added to the logits of every query for each key; ``value_value`` uses
    the values as queries and keys (v-v attention).
    """
    q, k, v = _qkv(mha, x)
    if value_value:
        q = k = v
    return _attend(mha, q, k, v, key_bias, x.shape)


def _qkv(
    mha: nn.MultiheadAttention, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head queries, keys and values [B, heads, L, C/heads] (one input projection)."""
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (_split_heads(t, mha.num_heads) for t in qkv)
    return q, k, v


def _attend(
    mha: nn.MultiheadAttention,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor | None,
    shape: torch.Size,
) -> torch.Tensor:
    """Fused scaled-dot-product attention (flash / memory-efficient kernels where the device has
    them), then the output projection."""
    mask = None if key_bias is None else key_bias[:, None, None, :].to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    projected: torch.Tensor = mha.out_proj(out.transpose(1, 2).reshape(shape))
    return projected


class DualPathAttention(nn.Module):
    """A block's attention with an extra v-v output stream (wraps the original module, shares weights).

    Called like ``nn.MultiheadAttention`` it behaves exactly as the original (q-k path only);
    :meth:`dual` returns both paths.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not isinstance(mha, nn.MultiheadAttention) or not mha._qkv_same_embed_dim:
            raise TypeError(
                f"v-v attention needs a self-attention nn.MultiheadAttention, got {type(mha)}"
            )
        self.mha = mha
        self.batch_first = mha.batch_first

    def forward(
        self, query: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out: tuple[torch.Tensor, torch.Tensor | None] = self.mha(query, *args, **kwargs)
        return out

    def dual(
        self, x: torch.Tensor, key_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(q-k output, v-v output) for ``x`` [B, L, C]; the bias applies to both.

        The input projection runs once for both paths (the v-v path only needs its values).
        """
        q, k, v = _qkv(self.mha, x)
        return (
            _attend(self.mha, q, k, v, key_bias, x.shape),
            _attend(self.mha, v, v, v, key_bias, x.shape),
        )


def attach_vv_attention(blocks: OpenClipModule, last_n: int) -> list[int]:
    """Swap the attention of the last ``last_n`` blocks for :class:`DualPathAttention`.

    Returns the 0-based indices of the swapped blocks. Idempotent; weights are shared, not copied.
    """
    if not 0 < last_n <= len(blocks):
        raise ValueError(
            f"v-v attention on the last {last_n} blocks, but the vision tower has {len(blocks)}; "
            f"set model.anomalyclip.vv_last_n between 1 and {len(blocks)}."
        )
    swapped = []
    for i in range(len(blocks) - last_n, len(blocks)):
        block = blocks[i]
        if not isinstance(block.attn, DualPathAttention):
            block.attn = DualPathAttention(block.attn)
        swapped.append(i)
    return swapped


# ------------------------------------------------------------ text tower


class PromptTokenizer:
    """CLIP BPE tokenisation with ``n_slots`` placeholder tokens after SOT."""

    def __init__(self, tokenizer: ClipTokenizer, n_slots: int, context_length: int = 77) -> None:
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
    """Runs an open_clip CLIP text tower with context and deep prompts (weights shared, frozen):
    its ``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
    ``text_projection`` and ``attn_mask``."""

    attn_mask: torch.Tensor | None

    def __init__(self, clip: OpenClipModule, prompt_dtype: torch.dtype | None = None) -> None:
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
        return int(self.token_embedding.embedding_dim)

    @property
    def device(self) -> torch.device:
        """Where the tower's weights (and its attention mask) live."""
        device: torch.device = self.token_embedding.weight.device
        return device

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
            d = deep[i] if deep and i < len(deep) else None
            if d is not None:
                d = d if self.prompt_dtype is None else d.to(self.prompt_dtype)
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
