"""The HXPE model: a CLIP base (AdaCLIP-, AnomalyCLIP- or WinCLIP-style) enhanced with explainable
text prompts and DINOv2 attention prompts.

Example:
    >>> model = build_model(ModelConfig(...))  # doctest: +SKIP
    >>> out = model(images, ["small dark scratch", None], references=refs)  # doctest: +SKIP
    >>> out.anomaly_map.shape, out.image_score.shape  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hxpe.model.attention import attach_vv_attention
from hxpe.model.bases import AdaClipPrompter, make_prompter
from hxpe.model.config import ModelConfig
from hxpe.model.explain import TextBank
from hxpe.model.hsf import hybrid_semantic_fusion
from hxpe.model.loading import CONFIG_DIR, load_clip, load_dinov2
from hxpe.model.maps import aggregate, gaussian_blur, layer_probabilities, upsample
from hxpe.model.text import TextEncoder
from hxpe.model.vfm import KeyBias, VfmPrompter
from hxpe.model.vision import VisualEncoder

log = logging.getLogger(__name__)


@dataclass
class ModelOutput:
    """What :meth:`HXPEModel.forward` returns.

    Attributes:
        image_score: [B] in [0, 1].
        anomaly_map: [B, H, W] at input resolution, smoothed (Gaussian σ = ``model.sigma``).
        layer_maps: per selected CLIP layer, (normal, abnormal) probabilities [B, 2, h, w].
        vfm_prompt: the calibrated DINOv2 prompt map [B, h, w] in [0, 1), or None.
        image_logits: [B, 2] (normal, abnormal) logits of the image score (for the loss).
    """

    image_score: torch.Tensor
    anomaly_map: torch.Tensor
    layer_maps: list[torch.Tensor]
    vfm_prompt: torch.Tensor | None
    image_logits: torch.Tensor


class HXPEModel(nn.Module):
    """CLIP + base prompter + explainable text prompts + DINOv2 attention prompts.

    Only the prompter's parameters (and λ of the fuse mode, β of the key bias, when learned) train;
    CLIP and DINOv2 are frozen and stay in eval mode.
    """

    def __init__(
        self, cfg: ModelConfig, clip: nn.Module, tokenizer: object, dinov2: nn.Module | None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisualEncoder(clip.visual, cfg.clip.layers)
        text = TextEncoder(clip)
        self.prompter = make_prompter(
            cfg,
            visual_width=self.visual.width,
            text_width=text.width,
            embed_dim=clip.visual.proj.shape[1],
            text_blocks=len(text.transformer.resblocks),
        )
        if cfg.base == "anomalyclip" and cfg.anomalyclip.vv_attention:
            attach_vv_attention(self.visual.blocks, cfg.anomalyclip.vv_last_n)
        self.text = TextBank(text, tokenizer, self.prompter, cfg.explain, cfg.object_name)
        self.vfm = VfmPrompter(dinov2, cfg.vfm) if dinov2 is not None else None
        n_blocks = len(self.visual.blocks)
        self.bias_blocks = frozenset(range(max(0, n_blocks - cfg.vfm.bias_last_n), n_blocks))
        self.key_bias = (
            KeyBias(cfg.vfm) if self.vfm is not None and cfg.vfm.trains_through else None
        )

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
        """The frozen CLS feature that dynamic prompts are projected from (no prompts, no grad)."""
        if not self.prompter.needs_condition:
            return None
        with torch.no_grad():
            return F.normalize(self.visual(images).cls, dim=-1)

    def forward(
        self,
        images: torch.Tensor,
        phrases: list[str | None],
        references: torch.Tensor | None = None,
        has_reference: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Score and localise anomalies.

        Args:
            images: [B, 3, H, W] float in [0, 1] (unnormalised; each backbone normalises).
            phrases: per image the gated explainable phrase, ``None`` (or "") for none.
            references: [B, 3, H, W] the class's normal reference per image, or None.
            has_reference: [B] bool, which rows of ``references`` are real.
        """
        if len(phrases) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(phrases)} phrases")
        size = (images.shape[-2], images.shape[-1])
        side = self.cfg.clip.image_size
        x = (
            images
            if size == (side, side)
            else F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
        )
        grid = self.visual.grid((side, side))
        cond = self._condition(x)
        vfm_map = None
        if self.vfm is not None:
            refs = None
            if references is not None:
                refs = F.interpolate(
                    references, size=(side, side), mode="bilinear", align_corners=False
                )
            vfm_map = self.vfm(x, grid, refs, has_reference)
        key_bias = None
        if vfm_map is not None and self.key_bias is not None:
            key_bias = self.key_bias(vfm_map)
        feats = self.visual(
            x, self.prompter.visual_prompts(cond, x.shape[0]), key_bias, self.bias_blocks
        )
        patches = [F.normalize(p, dim=-1) for p in self.prompter.project_patches(feats.patches)]
        cls = F.normalize(self.prompter.project_cls(feats.cls), dim=-1)
        text = self.text(phrases, cond)
        layer_maps = layer_probabilities(patches, text, self.cfg.temperature, grid)
        patch_map = aggregate(layer_maps)
        if vfm_map is not None and self.cfg.vfm.mode == "reweight":
            alpha = self.cfg.vfm.alpha
            patch_map = patch_map * (1.0 + alpha * vfm_map) / (1.0 + alpha)
        anomaly_map = gaussian_blur(upsample(patch_map, size), self.cfg.sigma)
        logits = self._image_logits(cls, patches, layer_maps, text)
        score = logits.softmax(dim=-1)[:, 1]
        if self.cfg.score_mode == "text_max":
            score = (score + anomaly_map.flatten(1).amax(dim=1).clamp(0, 1)) / 2.0
        return ModelOutput(score, anomaly_map, layer_maps, vfm_map, logits)

    def _image_logits(
        self,
        cls: torch.Tensor,
        patches: list[torch.Tensor],
        layer_maps: list[torch.Tensor],
        text: torch.Tensor,
    ) -> torch.Tensor:
        feature = cls
        use_hsf = (
            isinstance(self.prompter, AdaClipPrompter)
            and self.cfg.adaclip.hsf
            and self.cfg.score_mode == "base"
        )
        if use_hsf:
            a = self.cfg.adaclip
            abnormal = torch.stack([m[:, 1].flatten(1) for m in layer_maps]).mean(dim=0)
            feature = hybrid_semantic_fusion(
                patches, abnormal, cls, a.k_clusters, a.hsf_topk_factor, a.hsf_alpha, a.kmeans_iters
            )
        return torch.einsum("bd,bkd->bk", feature, text) / self.cfg.temperature


def build_model(cfg: ModelConfig) -> HXPEModel:
    """Load the backbones named by ``cfg`` (frozen) and build the model around them."""
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
