"""What the two pretrainings share: the optimisation schedule, its learning rate and the loss curve.

Example:
    >>> s = PretrainSchedule(steps=100, warmup=10, lr=1e-3)
    >>> [round(lr_at(i, s), 6) for i in (0, 9, 10, 100)]
    [0.0001, 0.001, 0.001, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PretrainSchedule:
    """Optimisation settings of one pretraining (each recipe below sets its own defaults; recorded in
    the backbones' provenance)."""

    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 40
    sizes: tuple[int, ...] = (
        112,
        128,
    )  # image sides, in turn: 112 px (14 x 14 grid), 128 (16 x 16)


def lr_at(step: int, schedule: PretrainSchedule) -> float:
    """Linear warm-up, then cosine decay to zero."""
    warm, total, lr = schedule.warmup, schedule.steps, schedule.lr
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def batches(
    schedule: PretrainSchedule, n_items: int, opt: torch.optim.Optimizer, seed: int
) -> Iterator[tuple[int, torch.Tensor, int]]:
    """``(step, item indices, image side)`` for each step, with the optimiser's learning rate set for
    the step first: ``batch_size`` items drawn without replacement from a generator seeded with
    ``seed`` (its own stream), the schedule's sides in turn."""
    gen = torch.Generator().manual_seed(seed)
    for step in range(schedule.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, schedule)
        idx = torch.randperm(n_items, generator=gen)[: schedule.batch_size]
        yield step, idx, schedule.sizes[step % len(schedule.sizes)]


@dataclass
class Curve:
    """Loss per logged step (the training curve of the provenance)."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def log(self, step: int, **losses: torch.Tensor) -> None:
        self.rows.append({"step": step, **{k: round(float(v), 5) for k, v in losses.items()}})
