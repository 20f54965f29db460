"""Hybrid semantic fusion (AdaCLIP adaclip.py:234-286, 516-521): the image feature of the score fuses
the CLS with the centre of k-means clusters of the most abnormal patch tokens.

As the authors: the ``k·factor`` patches with the highest abnormal probability of the softmax of the
layer-mean logits are taken from every layer; k-means runs on their tokens concatenated over layers;
each cluster's centre is the mean of its tokens over all layers, the clusters' centres are averaged
and normalised, and ``f = normalize(α · centre + (1 − α) · cls)``.

Clustering: :class:`SklearnKMeans` (scikit-learn ``KMeans(k, n_init='auto')`` drawing from one seeded
NumPy ``RandomState``, as AdaCLIP's KMeans draws from NumPy's global RNG seeded once by the scripts)
or :class:`TorchKMeans` (batched, deterministic, on the device). Labels carry no gradient; the centres
do.

Example:
    >>> x = torch.nn.functional.normalize(torch.randn(2, 50, 8), dim=-1)
    >>> TorchKMeans(iters=5)(x, k=4).shape
    torch.Size([2, 50])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class SklearnKMeans:
    """Per-image scikit-learn k-means labels; the RNG state carries over from call to call."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = np.random.RandomState(seed)
        self.per_image = False  # True: every image draws from a fresh RandomState(seed)

    def reset(self, seed: int | None = None) -> None:
        """Re-seed the RNG (the authors' ``np.random.seed``)."""
        self.seed = self.seed if seed is None else seed
        self.rng = np.random.RandomState(self.seed)

    def _rng(self) -> np.random.RandomState:
        return np.random.RandomState(self.seed) if self.per_image else self.rng

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        from sklearn.cluster import KMeans

        data = x.detach().float().cpu().numpy()
        labels = [
            KMeans(n_clusters=k, n_init="auto", random_state=self._rng()).fit_predict(d)
            for d in data
        ]
        return torch.as_tensor(np.stack(labels), device=x.device, dtype=torch.long)


class TorchKMeans:
    """Batched cosine k-means labels [B, n] of ``x`` [B, n, C]; evenly spaced deterministic init."""

    def __init__(self, iters: int = 10) -> None:
        self.iters = iters

    def reset(self, seed: int | None = None) -> None:
        return None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1)
        n = x.shape[1]
        init = torch.linspace(0, n - 1, k, device=x.device).round().long()
        centres = x[:, init]
        assign = (x @ centres.transpose(1, 2)).argmax(dim=2)
        for _ in range(self.iters):
            onehot = F.one_hot(assign, k).to(x.dtype)
            counts = onehot.sum(dim=1)
            mean = (onehot.transpose(1, 2) @ x) / counts.clamp(min=1).unsqueeze(-1)
            centres = torch.where(counts.unsqueeze(-1) > 0, mean, centres)
            assign = (x @ centres.transpose(1, 2)).argmax(dim=2)
        return assign


def cluster_centre(selected: list[torch.Tensor], labels: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the non-empty clusters of each cluster's mean token over all layers: [B, D].

    ``selected``: per layer [B, m, D]; ``labels``: [B, m] in 0..k-1.
    """
    onehot = F.one_hot(labels, k).to(selected[0].dtype)  # [B, m, k]
    sums = sum(onehot.transpose(1, 2) @ s for s in selected)  # [B, k, D]
    counts = onehot.sum(dim=1) * len(selected)  # [B, k]
    means = sums / counts.clamp(min=1).unsqueeze(-1)
    present = (counts > 0).to(means.dtype)
    return (means * present.unsqueeze(-1)).sum(1) / present.sum(1, keepdim=True)


@dataclass
class HsfParts:
    """The intermediates of :func:`hybrid_semantic_fusion` (the notebooks' walk-through checks
    the fusion from them).

    Attributes:
        top: [B, m] the indices of the m = k·factor most abnormal patches.
        labels: [B, m] their k-means cluster (0..k-1).
        k: the number of clusters used.
        centre: [B, D] the unit mean of the clusters' centres.
        feature: [B, D] the fused unit image feature.
    """

    top: torch.Tensor
    labels: torch.Tensor
    k: int
    centre: torch.Tensor
    feature: torch.Tensor


def hybrid_semantic_fusion(
    patches: list[torch.Tensor],
    logits: list[torch.Tensor],
    cls: torch.Tensor,
    k: int,
    topk_factor: int,
    alpha: float,
    clusterer: SklearnKMeans | TorchKMeans,
) -> torch.Tensor:
    """Fused unit image feature [B, D] (:func:`hsf_parts` ``.feature``).

    Args:
        patches: per layer unit patch tokens [B, N, D].
        logits: per layer (normal, abnormal) logits [B, 2, N] (any scale; softmax of their mean
            selects the patches).
        cls: unit CLS feature [B, D].
    """
    return hsf_parts(patches, logits, cls, k, topk_factor, alpha, clusterer).feature


def hsf_parts(
    patches: list[torch.Tensor],
    logits: list[torch.Tensor],
    cls: torch.Tensor,
    k: int,
    topk_factor: int,
    alpha: float,
    clusterer: SklearnKMeans | TorchKMeans,
) -> HsfParts:
    """:func:`hybrid_semantic_fusion` with its intermediates (:class:`HsfParts`)."""
    abnormal = torch.stack(logits).mean(dim=0).softmax(dim=1)[:, 1]  # [B, N]
    m = min(abnormal.shape[1], k * topk_factor)
    k = min(k, m)
    top = abnormal.topk(m, dim=1).indices
    index = top.unsqueeze(-1).expand(-1, -1, patches[0].shape[-1])
    selected = [p.gather(1, index) for p in patches]
    labels = clusterer(torch.cat(selected, dim=2), k)
    centre = F.normalize(cluster_centre(selected, labels, k), dim=1)
    feature = F.normalize(alpha * centre + (1.0 - alpha) * cls, dim=1)
    return HsfParts(top, labels, k, centre, feature)
