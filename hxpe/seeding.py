"""Seeds and determinism, set in one place for Python, NumPy, torch and data-loader workers."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic algorithms.

    On CPU the demo is bit-reproducible. On GPU, ``deterministic=True`` also sets
    ``CUBLAS_WORKSPACE_CONFIG`` and disables cuDNN autotuning; kernels without a deterministic
    implementation then warn instead of failing (``warn_only=True``), so GPU reruns agree to a
    tolerance (1e-4 on metrics) rather than bit for bit. ``deterministic=False`` switches those
    flags off again (the agent stages: vLLM's forked workers would inherit them).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:  # undo an earlier call in this process; forked engine workers inherit these flags
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def worker_init_fn(worker_id: int) -> None:
    """Seed a DataLoader worker from torch's per-worker seed (pass as ``worker_init_fn``)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def generator(seed: int) -> torch.Generator:
    """A torch Generator for DataLoader shuffling."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g
