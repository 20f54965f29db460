"""Multi-head attention computed from a frozen ``nn.MultiheadAttention``'s own weights.

Two small changes to CLIP's vision attention live here, each attached without copying weights:

* an additive **key bias** (the DINOv2 attention prompt in mode ``attn_bias``);
* **v-v attention** (AnomalyCLIP's DPAM, CLIP-Surgery style): queries and keys are replaced by the
  values, giving a second output stream that :func:`attach_vv_attention` switches on per block.

Example:
    >>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    >>> x = torch.randn(1, 5, 8)
    >>> torch.allclose(multihead_attention(mha, x), mha(x, x, x, need_weights=False)[0], atol=1e-6)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    return mha.out_proj(out.transpose(1, 2).reshape(shape))


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

    def forward(self, query: torch.Tensor, *args: object, **kwargs: object) -> tuple:
        return self.mha(query, *args, **kwargs)

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


def attach_vv_attention(blocks: nn.ModuleList, last_n: int) -> list[int]:
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
