"""AdaCLIP (Cao et al., ECCV 2024; caoyunkang/AdaCLIP@e27ee32) as a base: its config section, its
hybrid prompts, its image score (hybrid semantic fusion) and its training recipe.

* **Prompts** (:class:`AdaClipPrompter`, AdaCLIP's parameter layout, so its checkpoints load by
  renaming keys): static (learned) plus dynamic (``Linear`` heads on the image's frozen CLS feature)
  prompt tokens in the first ``prompt_depth`` blocks of the vision and language branches; per output
  layer a patch head ``Linear(vision width -> embed)`` on the raw block tokens, and a CLS head; the
  state x template ensemble as text.
* **Image score**: hybrid semantic fusion (adaclip.py:234-286, 516-521) fuses the CLS with the
  centre of k-means clusters of the most abnormal patch tokens. As the authors: the ``k·factor``
  patches with the highest abnormal probability of the softmax of the layer-mean logits are taken
  from every layer; k-means runs on their tokens concatenated over layers; each cluster's centre is
  the mean of its tokens over all layers, the clusters' centres are averaged and normalised, and
  ``f = normalize(α · centre + (1 − α) · cls)``. Clustering: :class:`SklearnKMeans` (scikit-learn
  ``KMeans(k, n_init='auto')`` drawing from one seeded NumPy ``RandomState``, as AdaCLIP's KMeans
  draws from NumPy's global RNG seeded once by the scripts) or :class:`TorchKMeans` (batched,
  deterministic, on the device). Labels carry no gradient; the centres do.
* **Fusion and losses**: the section's arithmetic (``mean_logits``, logit scale 100, focal image
  loss; hxpe/LEDGER.md has file:line for each).
* **Recipe** ``adaclip``: the released ``train.py``/``train.sh`` (the ``adaclip`` baseline row).

Example:
    >>> x = torch.nn.functional.normalize(torch.randn(2, 50, 8), dim=-1)
    >>> TorchKMeans(iters=5)(x, k=4).shape
    torch.Size([2, 50])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hxpe.model.bases.base import (
    BaseArithmetic,
    Dims,
    Fusion,
    ModelSettings,
    PromptBase,
    own_section,
    prompt_list,
    register_base,
)
from hxpe.model.clip_tower import VisualEncoder, VisualFeatures
from hxpe.model.explainable import ensemble
from hxpe.model.recipes import Recipe, register_recipe

PromptType = Literal["static", "dynamic"]
Branch = Literal["vision", "language"]


def _all(kind: object) -> list[Any]:
    """Every value of a ``Literal`` type (the defaults: both prompt types, both branches)."""
    return list(get_args(kind))


class AdaClipConfig(BaseArithmetic):
    """AdaCLIP-style base: hybrid static + dynamic prompts in both branches, HSF image score."""

    temperature: float = Field(0.01, description="Logit scale 100 (adaclip.py:513, 525).")
    layer_fusion: Fusion = "mean_logits"
    align_corners: bool = True
    pos_interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    cls_path: Literal["ln_post", "no_ln_post"] = "ln_post"
    object_word: Literal["generic", "class_name"] = "class_name"
    prompt_cast: Literal["float16", "none"] = "float16"
    image_loss: Literal["ce", "focal"] = "focal"
    batch_size: int = 1
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    text_layout: Literal["overwrite", "slots"] = Field(
        "overwrite",
        description="overwrite: no text prompt in block 1, blocks 2..depth overwrite the first "
        "`length` word tokens (AdaCLIP); slots: dedicated placeholder slots from block 1.",
    )
    dynamic_from: Literal["raw", "normalized"] = Field(
        "raw", description="Dynamic prompts from ln_post(CLS) @ proj as is, or L2-normalised."
    )
    patch_head: Literal["raw_tokens", "joint_identity"] = Field(
        "raw_tokens",
        description="raw_tokens: Linear(vision width → embed) on raw block tokens (AdaCLIP, "
        "loads its checkpoints); joint_identity: identity-initialised Linear(embed → embed) "
        "after ln_post + proj.",
    )

    prompt_depth: int = Field(
        4, ge=1, le=64, description="Blocks (from the first) that receive prompts."
    )
    prompt_length: int = Field(5, ge=1, le=64, description="Prompt tokens per prompted block.")
    prompt_types: list[PromptType] = Field(default_factory=lambda: _all(PromptType))
    branches: list[Branch] = Field(default_factory=lambda: _all(Branch))
    template_set: str = Field("adaclip", description="Template list in prompts.yaml.")
    hsf: bool = Field(True, description="Hybrid semantic fusion for the image score.")
    k_clusters: int = Field(20, ge=1, le=4096, description="k-means clusters of HSF.")
    hsf_topk_factor: int = Field(
        5, ge=1, description="HSF clusters the k·factor most abnormal patches."
    )
    hsf_alpha: float = Field(
        0.2, ge=0.0, le=1.0, description="Weight of the cluster feature against the CLS."
    )
    hsf_kmeans: Literal["sklearn", "torch"] = Field(
        "sklearn",
        description="sklearn: KMeans(k, n_init='auto') on the concatenated layer tokens, drawing "
        "from one seeded NumPy RandomState (AdaCLIP); torch: batched deterministic k-means.",
    )
    hsf_seed: int = Field(111, description="Seed of the k-means RNG (AdaCLIP setup_seed(111)).")
    kmeans_iters: int = Field(
        10, ge=1, le=10000, description="Lloyd iterations of the torch k-means."
    )


def _identity_linear(dim: int) -> nn.Linear:
    layer = nn.Linear(dim, dim)
    nn.init.eye_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


# ------------------------------------------------------------ image score: hybrid semantic fusion


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
        self.per_image = False  # no RNG: every image's labels are the same either way

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
    """The result of :func:`hybrid_semantic_fusion` with its intermediates (the notebooks'
    walk-through checks the fusion from them).

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
) -> HsfParts:
    """The fused unit image feature [B, D] (``.feature``) with its intermediates.

    Args:
        patches: per layer unit patch tokens [B, N, D].
        logits: per layer (normal, abnormal) logits [B, 2, N] (any scale; softmax of their mean
            selects the patches).
        cls: unit CLS feature [B, D].
    """
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


# ------------------------------------------------------------ prompts


@register_base
class AdaClipPrompter(PromptBase):
    """AdaCLIP's prompts (adaclip.py:35-143, 375-397); parameter names mirror its checkpoint."""

    name = "adaclip"
    source = "caoyunkang/AdaCLIP@e27ee32"

    def __init__(self, cfg: ModelSettings, dims: Dims) -> None:
        super().__init__(cfg, dims)
        a = own_section(cfg, self.name, AdaClipConfig)
        self.settings = a
        self.prompt_set = ensemble(a.template_set, cfg.explain.object_template)
        self.depth, self.length = a.prompt_depth, a.prompt_length
        self.layout = a.text_layout
        static, dynamic = "static" in a.prompt_types, "dynamic" in a.prompt_types
        if not (static or dynamic):
            raise ValueError("model.adaclip.prompt_types must hold 'static', 'dynamic' or both.")
        self.vision, self.language = "vision" in a.branches, "language" in a.branches
        self.text_slots = self.length if self.language and self.layout == "slots" else 0
        self.text_conditioned = self.language and dynamic
        if self.language:
            first = 0 if self.layout == "slots" else 1
            self.text_deep_blocks = tuple(range(first, self.depth))
            self.text_deep_length = self.length
        self.needs_condition = dynamic and (self.vision or self.language)
        e, cv, ct = dims.embed_dim, dims.visual_width, dims.text_width
        self.visual_static = (
            prompt_list(self.depth, self.length, cv) if static and self.vision else None
        )
        self.text_static = (
            prompt_list(self.depth, self.length, ct) if static and self.language else None
        )
        if self.text_static is not None and self.layout == "overwrite":
            # AdaCLIP builds it but its text branch never reads block 0's prompt (adaclip.py:81-82)
            self.text_static[0].requires_grad_(False)
        self.visual_dynamic = (
            nn.ModuleList(nn.Linear(e, cv) for _ in range(self.length))
            if dynamic and self.vision
            else None
        )
        self.text_dynamic = (
            nn.ModuleList(nn.Linear(e, ct) for _ in range(self.length))
            if dynamic and self.language
            else None
        )
        self.patch_head = a.patch_head
        if a.patch_head == "raw_tokens":
            self.patch_heads = nn.ModuleList(nn.Linear(cv, e) for _ in cfg.clip.layers)
            self.cls_head = nn.Linear(e, e)
        else:
            self.patch_heads = nn.ModuleList(_identity_linear(e) for _ in cfg.clip.layers)
            self.cls_head = _identity_linear(e)
        self.clusterer: SklearnKMeans | TorchKMeans = (
            SklearnKMeans(a.hsf_seed) if a.hsf_kmeans == "sklearn" else TorchKMeans(a.kmeans_iters)
        )

    def _static_plus_dynamic(
        self,
        static: nn.ParameterList | None,
        dynamic: nn.ModuleList | None,
        cond: torch.Tensor | None,
        n: int,
        blocks: range,
    ) -> list[torch.Tensor] | None:
        """Per block in ``blocks`` the static prompt plus the dynamic one generated from ``cond``
        (either alone when the other is off); None when both are off."""
        if static is None and dynamic is None:
            return None
        dyn = None
        if dynamic is not None:
            if cond is None:
                raise ValueError("dynamic prompts need the image's CLS feature")
            dyn = torch.stack([head(cond) for head in dynamic], dim=1)  # [n, length, C]
        parts: list[torch.Tensor] = []
        for i in blocks:
            if static is None:
                assert dyn is not None  # both off returned above
                parts.append(dyn)
            elif dyn is None:
                parts.append(static[i].expand(n, -1, -1))
            else:
                parts.append(dyn + static[i].expand(n, -1, -1))
        return parts

    def condition(self, visual: VisualEncoder, images: torch.Tensor) -> torch.Tensor | None:
        """The frozen CLS feature ``ln_post(x[0]) @ proj`` of an unprompted pass that dynamic
        prompts are generated from (no grad); raw (AdaCLIP) or L2-normalised."""
        if not self.needs_condition:
            return None
        with torch.no_grad():
            cls = visual(images).cls
        return cls if self.settings.dynamic_from == "raw" else F.normalize(cls, dim=-1)

    def visual_prompts(self, cond: torch.Tensor | None, batch: int) -> list[torch.Tensor] | None:
        return self._static_plus_dynamic(
            self.visual_static, self.visual_dynamic, cond, batch, range(self.depth)
        )

    def text_deep(self, cond: torch.Tensor | None, n: int) -> list[torch.Tensor | None] | None:
        if self.layout == "slots":
            prompts = self._static_plus_dynamic(
                self.text_static, self.text_dynamic, cond, n, range(self.depth)
            )
            return None if prompts is None else [*prompts]
        later = self._static_plus_dynamic(
            self.text_static, self.text_dynamic, cond, n, range(1, self.depth)
        )
        return None if later is None else [None, *later]

    def project_patches(self, feats: VisualFeatures) -> list[torch.Tensor]:
        source = feats.raw_patches if self.patch_head == "raw_tokens" else feats.patches
        if source is None:
            raise ValueError("AdaCLIP's patch heads need the vision tower's raw patch tokens.")
        return [head(p) for head, p in zip(self.patch_heads, source, strict=True)]

    def project_cls(self, cls: torch.Tensor) -> torch.Tensor:
        projected: torch.Tensor = self.cls_head(cls)
        return projected

    def image_feature(
        self, cls: torch.Tensor, patches: list[torch.Tensor], logits: list[torch.Tensor]
    ) -> tuple[torch.Tensor, HsfParts | None]:
        """Hybrid semantic fusion of the unit CLS with the abnormal patches' clusters
        (``adaclip.hsf``), or the CLS itself."""
        if not self.settings.hsf:
            return cls, None
        a = self.settings
        flat = [lg.flatten(2) for lg in logits]
        parts = hybrid_semantic_fusion(
            patches, flat, cls, a.k_clusters, a.hsf_topk_factor, a.hsf_alpha, self.clusterer
        )
        return parts.feature, parts

    def reset_rng(self, seed: int | None = None) -> None:
        """Re-seed the HSF k-means RNG (``adaclip.hsf_seed``, or ``seed``)."""
        self.clusterer.reset(seed)

    @contextmanager
    def same_rng_per_image(self) -> Iterator[None]:
        """Every image's HSF k-means draws from a fresh RNG seeded ``adaclip.hsf_seed`` within the
        block; outside it, the authors' single stream."""
        previous = self.clusterer.per_image
        self.clusterer.per_image = True
        try:
            yield
        finally:
            self.clusterer.per_image = previous


register_recipe(
    Recipe(
        name="adaclip",
        source="caoyunkang/AdaCLIP@e27ee32 (train.py, train.sh)",
        epochs=5,
        lr=0.01,
        batch_size=1,
        optimizer="adamw",
        betas=(0.5, 0.999),
        weight_decay=0.01,
        layers="all",
        mosaic_rates={"mvtec": 0.2},
        anchors={
            "epochs": "train.py:155 (default 5); train.sh passes none",
            "lr": "train.py:156 (default 0.01)",
            "batch_size": "train.py:157 (default 1), 177-179 (only 1 supported)",
            "optimizer": "method/trainer.py:87 AdamW(lr, betas=(0.5, 0.999)); weight decay "
            "torch's default 0.01",
            "layers": "train.py:49 [d/4, d/2, 3d/4, d] (6, 12, 18, 24 on ViT-L)",
            "augmentation": "dataset/base_dataset.py:54-98 combine_img (2x2), :108 "
            "random() < aug_rate; dataset/mvtec.py:15 aug_rate=0.2; visa.py:15, mpdd.py:12, "
            "btad.py:12, sdd.py:13, dagm.py:12, dtd.py:12 aug_rate=0.0",
        },
    )
)
