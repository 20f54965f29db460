"""CUDA autocast's dtype policy, emulated on CPU, so that bf16 paths that only break on a GPU break
in the CPU tests too.

CPU and CUDA autocast cast different operator lists (torch's ``autocast_mode.cpp``). Two gaps matter:

* **Ops that refuse reduced precision.** CPU autocast runs ``quantile``, ``nanquantile``, the
  ``linalg``/FFT family, ``stft`` and the old decompositions (``inverse``, ``svd``, ...) in float32
  (its fp32 list); CUDA autocast leaves them alone, and their CUDA kernels refuse bf16 ("quantile()
  input tensor must be either float or double dtype"; "not implemented for 'BFloat16'"). Under
  :func:`cuda_autocast_policy` they refuse bf16/fp16 inputs on CPU as well, with CUDA's message.
* **Ops CUDA autocast runs in float32** (its fp32 list: softmax, log_softmax, layer_norm, group_norm,
  exp/log/pow, cumsum, sum/prod, norm, logsumexp, the losses, ...): their outputs are float32 on a
  GPU but bf16 on CPU. Under the policy they get float32 inputs while autocast is on, so the dtype
  mix downstream (indexing, concatenation, in-place writes) is the one a GPU sees.

Matmuls, linear layers and convolutions are in both lists' lower-precision set: CPU autocast already
returns them in bf16. Use the policy around the code under test, together with CPU autocast::

    with cuda_autocast_policy(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

REDUCED = (torch.bfloat16, torch.float16)
QUANTILE_MESSAGE = "quantile() input tensor must be either float or double dtype"
# Names (``func.__name__``) whose CUDA kernels refuse reduced precision and that CUDA autocast does
# not upcast; plus every ``linalg_*`` and ``fft_*`` function.
REFUSING = frozenset(
    {
        "quantile",
        "nanquantile",
        "stft",
        "istft",
        "inverse",
        "pinverse",
        "cholesky",
        "cholesky_inverse",
        "cholesky_solve",
        "svd",
        "qr",
        "det",
        "logdet",
        "slogdet",
        "lu",
        "lu_solve",
        "triangular_solve",
        "geqrf",
        "orgqr",
        "ormqr",
        "polar",
        "view_as_complex",
    }
)
REFUSING_PREFIXES = ("linalg_", "fft_")
# CUDA autocast's fp32 list (and its fp32-unless-dtype-given list), by Python name.
CUDA_FP32 = frozenset(
    {
        "acos",
        "asin",
        "cosh",
        "erfinv",
        "exp",
        "expm1",
        "log",
        "log10",
        "log2",
        "log1p",
        "reciprocal",
        "rsqrt",
        "sinh",
        "tan",
        "pow",
        "__pow__",
        "__rpow__",
        "softplus",
        "layer_norm",
        "group_norm",
        "norm",
        "cosine_similarity",
        "poisson_nll_loss",
        "cosine_embedding_loss",
        "nll_loss",
        "hinge_embedding_loss",
        "kl_div",
        "l1_loss",
        "smooth_l1_loss",
        "huber_loss",
        "mse_loss",
        "margin_ranking_loss",
        "multilabel_margin_loss",
        "soft_margin_loss",
        "triplet_margin_loss",
        "multi_margin_loss",
        "binary_cross_entropy_with_logits",
        "dist",
        "pdist",
        "cdist",
        "renorm",
        "logsumexp",
        "prod",
        "softmax",
        "log_softmax",
        "cumprod",
        "cumsum",
        "sum",
    }
)


def _tensors(args: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    tree_map(lambda a: out.append(a) if isinstance(a, torch.Tensor) else None, args)
    return out


def _refuses(name: str) -> bool:
    return name in REFUSING or name.startswith(REFUSING_PREFIXES)


def _upcast(a: Any) -> Any:
    return a.float() if isinstance(a, torch.Tensor) and a.dtype in REDUCED else a


class cuda_autocast_policy(TorchFunctionMode):  # noqa: N801 - used like torch.autocast
    """A context manager: CUDA autocast's dtype policy on top of CPU autocast (module docstring).

    ``refused`` lists the names of the calls it refused (a test can assert it saw the op).
    """

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if _refuses(name) and any(t.dtype in REDUCED for t in _tensors((args, kwargs))):
            self.refused.append(name)
            dtype = next(t.dtype for t in _tensors((args, kwargs)) if t.dtype in REDUCED)
            if name in ("quantile", "nanquantile"):
                raise RuntimeError(f"{QUANTILE_MESSAGE} (CUDA autocast policy, emulated)")
            raise RuntimeError(
                f'"{name}_cuda" not implemented for {str(dtype).removeprefix("torch.")!r} '
                f"(CUDA autocast policy, emulated)"
            )
        if name in CUDA_FP32 and torch.is_autocast_enabled("cpu") and kwargs.get("dtype") is None:
            args, kwargs = tree_map(_upcast, (args, kwargs))
        return func(*args, **kwargs)
