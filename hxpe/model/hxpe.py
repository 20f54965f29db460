"""The HXPE model: a CLIP base (AdaCLIP-, AnomalyCLIP- or WinCLIP-style) enhanced with explainable
text prompts and DINOv2 attention prompts.

Example (tiny random-init backbones; maps come back at the input size, prompts on the patch grid):
    >>> from hxpe.model.tiny import tiny_model_config
    >>> model = build_model(tiny_model_config("adaclip")).eval()
    >>> images, refs = torch.rand(2, 3, 96, 96), torch.rand(2, 3, 96, 96)
    >>> with torch.no_grad():
    ...     out = model(images, ["small dark scratch", None], references=refs)
    >>> out.anomaly_map.shape, out.image_score.shape, out.vfm_prompt.shape
    (torch.Size([2, 96, 96]), torch.Size([2]), torch.Size([2, 8, 8]))
    >>> bool(((out.image_score >= 0) & (out.image_score <= 1)).all())
    True
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from hxpe.model.bases import Dims
from hxpe.model.config import ModelConfig
from hxpe.model.explain import TextBank
from hxpe.model.hsf import HsfParts, SklearnKMeans, TorchKMeans, hsf_parts
from hxpe.model.loading import CONFIG_DIR, load_clip, load_dinov2
from hxpe.model.maps import fuse_layers, gaussian_blur, layer_logits, map_range, upsample
from hxpe.model.registry import base_spec
from hxpe.model.text import TextEncoder
from hxpe.model.vfm import KeyBias, VfmPrompter, VfmSteps
from hxpe.model.vision import VisualEncoder, VisualFeatures

if TYPE_CHECKING:
    from hxpe.model.caches import PhraseCache, ReferenceCache

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "none": None}


@dataclass
class ForwardTrace:
    """The intermediates of one forward pass (``forward(..., trace=True)``), from which the
    notebooks' walk-through recomputes each equation (:mod:`hxpe.equations`).

    Attributes:
        grid: CLIP's patch grid (h, w).
        vfm: the DINOv2 prompt step by step, or None without DINOv2 prompts.
        key_bias: [B, N] the additive bias on CLIP's patch keys, or None (no ``attn_bias``).
        bias_blocks: the 0-based vision blocks that add ``key_bias``.
        patch_tokens: per selected layer the unit patch tokens in the text space [B, N, D].
        layer_fused: [B, H, W] the fused map before the ``reweight`` mode and the smoothing.
        fused: [B, H, W] the fused map before the smoothing.
        sigma: the Gaussian σ applied to ``fused``.
        hsf: the hybrid semantic fusion's intermediates, or None when the score uses the CLS.
        score_feature: [B, D] the unit image feature the image logits are computed from.
    """

    grid: tuple[int, int]
    vfm: VfmSteps | None
    key_bias: torch.Tensor | None
    bias_blocks: tuple[int, ...]
    patch_tokens: list[torch.Tensor]
    layer_fused: torch.Tensor
    fused: torch.Tensor
    sigma: float
    hsf: HsfParts | None
    score_feature: torch.Tensor


@dataclass
class ModelOutput:
    """What :meth:`HXPEModel.forward` returns.

    Attributes:
        image_score: [B] in [0, 1].
        anomaly_map: [B, H, W] at input resolution, smoothed (Gaussian σ = ``model.sigma``); its
            range is the base's fusion's ([0, 1], or [0, L] for AnomalyCLIP's sum over L layers).
        layer_maps: per selected CLIP layer, (normal, abnormal) probabilities [B, 2, h, w].
        vfm_prompt: the calibrated DINOv2 prompt map [B, h, w] in [0, 1), or None.
        image_logits: [B, 2] (normal, abnormal) logits of the image score (for the loss).
        layer_logits: per layer the (normal, abnormal) logits [B, 2, h, w] (for the loss).
        text_features: [B, 2, D] the unit (normal, abnormal) text embeddings used.
        image_features: [B, D] the unit CLS feature of the score (before HSF).
        trace: the pass's intermediates when ``forward(..., trace=True)``, else None.
    """

    image_score: torch.Tensor
    anomaly_map: torch.Tensor
    layer_maps: list[torch.Tensor]
    vfm_prompt: torch.Tensor | None
    image_logits: torch.Tensor
    layer_logits: list[torch.Tensor] | None = None
    text_features: torch.Tensor | None = None
    image_features: torch.Tensor | None = None
    trace: ForwardTrace | None = None


class HXPEModel(nn.Module):
    """CLIP + a registered base (:mod:`hxpe.model.registry`) + explainable text prompts + DINOv2
    attention prompts.

    Only the prompter's parameters (and λ of the fuse mode, β of the key bias, when learned) train;
    CLIP and DINOv2 are frozen and stay in eval mode.
    """

    def __init__(
        self, cfg: ModelConfig, clip: nn.Module, tokenizer: object, dinov2: nn.Module | None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.spec = base_spec(cfg.base)
        arith = cfg.arithmetic
        cast = _DTYPES[arith.prompt_cast]
        self.visual = VisualEncoder(clip.visual, cfg.clip.layers, arith.pos_interpolation, cast)
        text = TextEncoder(clip, prompt_dtype=cast)
        dims = Dims(
            visual_width=self.visual.width,
            text_width=text.width,
            embed_dim=clip.visual.proj.shape[1],
            text_blocks=len(text.transformer.resblocks),
        )
        if self.spec.make_prompter is None:
            raise ValueError(
                f"Base {cfg.base!r} is a model of its own (registry spec 'build'); build it with "
                "hxpe.model.hxpe.build_model, not HXPEModel."
            )
        self.prompter = self.spec.make_prompter(cfg, dims)
        self.spec.attach(cfg, self.visual)
        self.text = TextBank(
            text,
            tokenizer,
            self.prompter,
            cfg.explain,
            cfg.object_name,
            class_names=arith.object_word == "class_name",
        )
        self.vfm = VfmPrompter(dinov2, cfg.vfm) if dinov2 is not None else None
        n_blocks = len(self.visual.blocks)
        self.bias_blocks = frozenset(range(max(0, n_blocks - cfg.vfm.bias_last_n), n_blocks))
        self.key_bias = (
            KeyBias(cfg.vfm) if self.vfm is not None and cfg.vfm.trains_through else None
        )
        a = cfg.adaclip
        self.clusterer = (
            SklearnKMeans(a.hsf_seed) if a.hsf_kmeans == "sklearn" else TorchKMeans(a.kmeans_iters)
        )

    def reset_rng(self) -> None:
        """Re-seed the HSF k-means RNG (``adaclip.hsf_seed``), as the authors' scripts seed NumPy
        once before a pass; every inference pass starts here, so its scores do not depend on
        what ran before."""
        self.clusterer.reset()

    @contextmanager
    def same_rng_per_image(self) -> Iterator[None]:
        """Within the block every image's HSF k-means draws from a fresh RNG seeded
        ``adaclip.hsf_seed`` (scores independent of batch position and call order; used where
        forwards are compared, e.g. leave-one-word-out). Outside it, the authors' single stream."""
        previous = getattr(self.clusterer, "per_image", None)
        if previous is not None:
            self.clusterer.per_image = True
        try:
            yield
        finally:
            if previous is not None:
                self.clusterer.per_image = previous

    def backbones(self) -> list[nn.Module]:
        """The frozen pretrained modules."""
        mods: list[nn.Module] = [self.visual.visual, self.text.encoder]
        return mods + ([self.vfm.dinov2] if self.vfm is not None else [])

    def train(self, mode: bool = True) -> HXPEModel:
        super().train(mode)
        for m in self.backbones():
            m.eval()
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Name -> tensor of every trainable parameter (what a checkpoint stores)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def _condition(self, images: torch.Tensor) -> torch.Tensor | None:
        """The frozen CLS feature ``ln_post(x[0]) @ proj`` of an unprompted pass that dynamic
        prompts are generated from (no grad); raw (AdaCLIP) or L2-normalised."""
        if not self.prompter.needs_condition:
            return None
        with torch.no_grad():
            cls = self.visual(images).cls
        return cls if self.cfg.adaclip.dynamic_from == "raw" else F.normalize(cls, dim=-1)

    def _score_cls(self, feats: VisualFeatures) -> torch.Tensor:
        """The CLS the image score uses: ``ln_post(x[0]) @ proj``, or ``x[0] @ proj``."""
        if self.cfg.arithmetic.cls_path == "no_ln_post":
            return feats.cls_token @ self.visual.visual.proj
        return feats.cls

    def forward(
        self,
        images: torch.Tensor,
        phrases: list[str | None],
        references: torch.Tensor | None = None,
        has_reference: torch.Tensor | None = None,
        class_names: list[str] | None = None,
        *,
        phrase_cache: PhraseCache | None = None,
        reference_cache: ReferenceCache | None = None,
        trim_text: bool = True,
        sigma: float | None = None,
        trace: bool = False,
    ) -> ModelOutput:
        """Score and localise anomalies.

        Args:
            images: [B, 3, H, W] float in [0, 1] (unnormalised; each backbone normalises).
            phrases: per image the gated explainable phrase, ``None`` (or "") for none.
            references: [B, 3, H, W] the class's normal reference per image, or None.
            has_reference: [B] bool, which rows of ``references`` are real.
            class_names: per image its class, for bases whose prompts carry the class name
                (``object_word: class_name``); None = the generic ``model.object_name``.
            phrase_cache, reference_cache: caller-owned caches of prompt embeddings and of the
                references' DINOv2 features (:mod:`hxpe.model.caches`, owned by
                :mod:`hxpe.model.inference`); the model itself holds none.
            trim_text: run the text tower up to the last EOT only (exact); False = 77 tokens.
            sigma: Gaussian σ of the output map; None = ``model.sigma``, 0 = unsmoothed.
            trace: also return the pass's intermediates (:class:`ForwardTrace`).
        """
        if len(phrases) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(phrases)} phrases")
        arith = self.cfg.arithmetic
        size = (images.shape[-2], images.shape[-1])
        side = self.cfg.clip.image_size
        x = (
            images
            if size == (side, side)
            else F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
        )
        grid = self.visual.grid((side, side))
        cond = self._condition(x)
        steps = None
        if self.vfm is not None:
            refs = None
            if references is not None:
                refs = F.interpolate(
                    references, size=(side, side), mode="bilinear", align_corners=False
                )
            steps = self.vfm.steps(x, grid, refs, has_reference, reference_cache=reference_cache)
        vfm_map = None if steps is None else steps.prompt
        key_bias = None
        if vfm_map is not None and self.key_bias is not None:
            key_bias = self.key_bias(vfm_map)
        feats = self.visual(
            x, self.prompter.visual_prompts(cond, x.shape[0]), key_bias, self.bias_blocks
        )
        patches = [F.normalize(p, dim=-1) for p in self.prompter.project_patches(feats)]
        cls = F.normalize(self.prompter.project_cls(self._score_cls(feats)), dim=-1)
        text = self.text(phrases, cond, class_names, cache=phrase_cache, trim=trim_text)
        logits = layer_logits(patches, text, arith.temperature, grid)
        layer_fused = fuse_layers(logits, size, arith.layer_fusion, arith.align_corners)
        fused = layer_fused
        if vfm_map is not None and self.cfg.vfm.mode == "reweight":
            alpha = self.cfg.vfm.alpha
            fused = layer_fused * (1.0 + alpha * upsample(vfm_map, size)) / (1.0 + alpha)
        sigma = self.cfg.sigma if sigma is None else sigma
        anomaly_map = gaussian_blur(fused, sigma)
        feature, hsf = self._score_feature(cls, patches, logits)
        image_logits = torch.einsum("bd,bkd->bk", feature, text.to(feature.dtype)) / (
            arith.temperature
        )
        score = image_logits.softmax(dim=-1)[:, 1]
        if self.cfg.score_mode == "text_max":
            top = map_range(arith.layer_fusion, len(logits))
            score = (score + (anomaly_map.flatten(1).amax(dim=1) / top).clamp(0, 1)) / 2.0
        record = None
        if trace:
            record = ForwardTrace(
                grid=grid,
                vfm=steps,
                key_bias=key_bias,
                bias_blocks=tuple(sorted(self.bias_blocks)) if key_bias is not None else (),
                patch_tokens=patches,
                layer_fused=layer_fused,
                fused=fused,
                sigma=float(sigma),
                hsf=hsf,
                score_feature=feature,
            )
        return ModelOutput(
            score,
            anomaly_map,
            [lg.softmax(dim=1) for lg in logits],
            vfm_map,
            image_logits,
            layer_logits=logits,
            text_features=text,
            image_features=cls,
            trace=record,
        )

    def _score_feature(
        self, cls: torch.Tensor, patches: list[torch.Tensor], logits: list[torch.Tensor]
    ) -> tuple[torch.Tensor, HsfParts | None]:
        """The unit image feature of the score: HSF's fusion (AdaCLIP) or the CLS itself."""
        if self.spec.image_score(self.cfg) == "hsf" and self.cfg.score_mode == "base":
            a = self.cfg.adaclip
            flat = [lg.flatten(2) for lg in logits]
            parts = hsf_parts(
                patches, flat, cls, a.k_clusters, a.hsf_topk_factor, a.hsf_alpha, self.clusterer
            )
            return parts.feature, parts
        return cls, None


def build_model(cfg: ModelConfig) -> HXPEModel:
    """Load the backbones named by ``cfg`` (frozen) and build the model around them.

    A base whose registry spec has its own ``build`` (``winclip``:
    :class:`hxpe.model.winclip.WinClipModel`, same forward interface) is built by it."""
    spec = base_spec(cfg.base)
    if spec.build is not None:
        return spec.build(cfg)  # type: ignore[return-value]
    clip, tokenizer = load_clip(cfg.clip, seed=cfg.random_init_seed)
    dinov2 = load_dinov2(cfg.vfm, seed=cfg.random_init_seed + 1) if cfg.vfm.enabled else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.random_init_seed + 2)
        model = HXPEModel(cfg, clip, tokenizer, dinov2)
    n_train = sum(p.numel() for p in model.trainable_state().values())
    log.info("HXPE model (base %s): %d trainable parameters", cfg.base, n_train)
    return model


def build_paper_architecture_random(cfg: ModelConfig | None = None) -> HXPEModel:
    """The paper-size architecture (ViT-L/14@336 CLIP, DINOv2 ViT-S/14) with RANDOM weights.

    For dry runs and benchmarks on machines without the weights: compute and memory match the real
    model, outputs mean nothing.
    """
    base = cfg or ModelConfig()
    dino_cfg = CONFIG_DIR / "dinov2-small.json"
    cfg = base.model_copy(
        update={
            "clip": base.clip.model_copy(update={"pretrained": None, "config_file": None}),
            "vfm": base.vfm.model_copy(update={"config_file": str(dino_cfg)}),
        }
    )
    log.warning(
        "Building the paper architecture (%s + DINOv2 ViT-S/14) with RANDOM WEIGHTS: "
        "for dry runs and benchmarks only.",
        cfg.clip.model_name,
    )
    return build_model(cfg)
