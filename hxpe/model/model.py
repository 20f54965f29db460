"""The HXPE model: a CLIP base (AdaCLIP-, AnomalyCLIP- or WinCLIP-style) enhanced with explainable
text prompts and DINOv2 attention prompts; its forward pass reads top to bottom, and the anomaly map
(the per-layer patch-text logits, the base's layer fusion, the Gaussian smoothing) is computed here.

The forward pass (:meth:`HXPEModel.forward`), file by file:

1. the base conditions on the image (:meth:`hxpe.model.bases.base.PromptBase.condition`);
2. DINOv2's prompt map and its key bias (:mod:`hxpe.model.dinov2_prompt`);
3. CLIP's vision tower with the base's visual prompts and the key bias (:mod:`hxpe.model.clip_tower`);
4. the base's patch and CLS projections (:mod:`hxpe.model.bases`);
5. the explainable text prompts through CLIP's text tower (:mod:`hxpe.model.explainable`);
6. per-layer logits, the layer fusion and the smoothing into the anomaly map (here);
7. the base's image feature (AdaCLIP: hybrid semantic fusion) against the text: the image score.

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

The Gaussian smoothing keeps the mass and the peak:
    >>> m = torch.zeros(1, 33, 33); m[0, 16, 16] = 1.0
    >>> out = gaussian_blur(m, sigma=2.0)
    >>> round(float(out.sum()), 4), int(out[0].argmax())
    (1.0, 544)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from hxpe.model.bases.base import (
    BaseArithmetic,
    Dims,
    ForwardTrace,
    Fusion,
    ModelOutput,
    base_class,
    own_section,
    prompt_base,
)
from hxpe.model.clip_tower import (
    ClipTokenizer,
    OpenClipModule,
    TextEncoder,
    VisualEncoder,
    VisualFeatures,
)
from hxpe.model.config import ModelConfig
from hxpe.model.dinov2_prompt import HfModule, KeyBias, ReferenceCache, VfmPrompter, full_precision
from hxpe.model.explainable import PhraseCache, TextBank
from hxpe.model.loading import CONFIG_DIR, load_clip, load_dinov2

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "none": None}


class HXPEModel(nn.Module):
    """CLIP + a registered prompted base (:mod:`hxpe.model.bases`) + explainable text prompts +
    DINOv2 attention prompts.

    Only the prompter's parameters (and λ of the fuse mode, β of the key bias, when learned) train;
    CLIP and DINOv2 are frozen and stay in eval mode.
    """

    _hxpe_compiled: bool = False  # set by hxpe.model.inference.maybe_compile

    def __init__(
        self,
        cfg: ModelConfig,
        clip: OpenClipModule,
        tokenizer: ClipTokenizer,
        dinov2: HfModule | None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        base = prompt_base(cfg.base)
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
        self.prompter = base(cfg, dims)
        self.prompter.attach(self.visual)
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

    @property
    def arith(self) -> BaseArithmetic:
        """The base's arithmetic, read from the current ``cfg`` (``model.cfg`` may be replaced)."""
        return own_section(self.cfg, self.cfg.base, BaseArithmetic)

    def reset_rng(self, seed: int | None = None) -> None:
        """Re-seed the base's image-score RNG (AdaCLIP's HSF k-means: ``adaclip.hsf_seed``, or
        ``seed``), as the authors' scripts seed NumPy once before a pass; every inference pass
        starts here, so its scores do not depend on what ran before."""
        self.prompter.reset_rng(seed)

    @contextmanager
    def same_rng_per_image(self) -> Iterator[None]:
        """Within the block every image's score draws from a freshly seeded RNG (scores
        independent of batch position and call order; used where forwards are compared, e.g.
        leave-one-word-out). Outside it, the authors' single stream."""
        with self.prompter.same_rng_per_image():
            yield

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

    def _score_cls(self, feats: VisualFeatures) -> torch.Tensor:
        """The CLS the image score uses: ``ln_post(x[0]) @ proj``, or ``x[0] @ proj``."""
        if self.arith.cls_path == "ln_post":
            return feats.cls
        if feats.cls_token is None:
            raise ValueError("cls_path no_ln_post needs the vision tower's raw CLS token.")
        cls: torch.Tensor = feats.cls_token @ self.visual.visual.proj
        return cls

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
                references' DINOv2 features (:class:`hxpe.model.explainable.PhraseCache`,
                :class:`hxpe.model.dinov2_prompt.ReferenceCache`, owned by
                :mod:`hxpe.model.inference`); the model itself holds none.
            trim_text: run the text tower up to the last EOT only (exact); False = 77 tokens.
            sigma: Gaussian σ of the output map; None = ``model.sigma``, 0 = unsmoothed.
            trace: also return the pass's intermediates (:class:`ForwardTrace`).
        """
        if len(phrases) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(phrases)} phrases")
        arith = self.arith
        size = (images.shape[-2], images.shape[-1])
        side = self.cfg.clip.image_size
        x = (
            images
            if size == (side, side)
            else F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
        )
        grid = self.visual.grid((side, side))
        cond = self.prompter.condition(self.visual, x)
        steps = None
        if self.vfm is not None:
            refs = None
            if references is not None:
                refs = F.interpolate(
                    references, size=(side, side), mode="bilinear", align_corners=False
                )
            steps = self.vfm(x, grid, refs, has_reference, reference_cache=reference_cache)
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
        feature, parts = (
            self.prompter.image_feature(cls, patches, logits)
            if self.cfg.score_mode == "base"
            else (cls, None)
        )
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
                score_parts=parts,
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


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of ``cfg``'s base (:meth:`hxpe.model.bases.base.Base.build`): a prompted base is
    assembled by :func:`assemble` into an :class:`HXPEModel`; a training-free base (WinCLIP) builds
    its own model with the same forward interface."""
    return base_class(cfg.base).build(cfg, assemble)


def assemble(cfg: ModelConfig) -> HXPEModel:
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
    return assemble(cfg)


# ------------------------------------------------------------ the anomaly map


def layer_logits(
    patches: list[torch.Tensor], text: torch.Tensor, temperature: float, grid: tuple[int, int]
) -> list[torch.Tensor]:
    """Per layer (normal, abnormal) logits ``patch·text/τ`` as [B, 2, h, w] (float32).

    ``patches``: unit tokens [B, N, D] per layer; ``text``: unit embeddings [B, 2, D].
    """
    out = []
    with full_precision(text):
        text = text.float()
        for p in patches:
            logits = torch.einsum("bnd,bkd->bkn", p.float(), text) / temperature
            out.append(logits.reshape(p.shape[0], 2, *grid))
    return out


def upsample(
    maps: torch.Tensor, size: tuple[int, int], align_corners: bool = False
) -> torch.Tensor:
    """Bilinear [B, h, w] -> [B, H, W], or [B, C, h, w] -> [B, C, H, W]."""
    if maps.dim() == 3:
        return upsample(maps.unsqueeze(1), size, align_corners)[:, 0]
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=align_corners)


def layer_probabilities_at(
    logits: list[torch.Tensor], size: tuple[int, int], fusion: Fusion, align_corners: bool
) -> list[torch.Tensor]:
    """Per layer (normal, abnormal) probabilities [B, 2, H, W] at ``size``, as the base forms them:
    ``up(softmax(logits))`` (AnomalyCLIP, fusions ``*_probs``) or ``softmax(up(logits))``
    (AdaCLIP, ``mean_logits``). These are what the focal and dice losses see."""
    with full_precision(logits[0]):
        if fusion == "mean_logits":
            return [upsample(lg.float(), size, align_corners).softmax(dim=1) for lg in logits]
        return [upsample(lg.float().softmax(dim=1), size, align_corners) for lg in logits]


def fuse_layers(
    logits: list[torch.Tensor], size: tuple[int, int], fusion: Fusion, align_corners: bool
) -> torch.Tensor:
    """The anomaly map [B, H, W] (before smoothing) from per-layer logits [B, 2, h, w].

    * ``sum_probs`` (zqhang/AnomalyCLIP@45ed4dd test.py:97-109): Σ_l (up(p1) + 1 − up(p0)) / 2, range [0, L];
    * ``mean_probs``: the same averaged over layers, range [0, 1];
    * ``mean_logits`` (caoyunkang/AdaCLIP@e27ee32 adaclip.py:529-540): q = softmax(mean_l up(logits)),
      (q1 + 1 − q0) / 2, range [0, 1].
    """
    with full_precision(logits[0]):
        if fusion == "mean_logits":
            mean = torch.stack([upsample(lg.float(), size, align_corners) for lg in logits]).mean(0)
            q = mean.softmax(dim=1)
            return (q[:, 1] + 1.0 - q[:, 0]) / 2.0
        probs = layer_probabilities_at(logits, size, fusion, align_corners)
        per_layer = torch.stack([(p[:, 1] + 1.0 - p[:, 0]) / 2.0 for p in probs])
        return per_layer.sum(dim=0) if fusion == "sum_probs" else per_layer.mean(dim=0)


def map_range(fusion: Fusion, n_layers: int) -> float:
    """Upper end of the fused map's range (its lower end is 0)."""
    return float(n_layers) if fusion == "sum_probs" else 1.0


def _symmetric_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Pad by half-sample symmetric reflection (scipy.ndimage's 'reflect'), any width."""
    n = x.shape[dim]
    idx = torch.arange(-r, n + r, device=x.device) % (2 * n)
    idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
    return x.index_select(dim, idx)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian filter of [B, H, W] maps, like ``scipy.ndimage.gaussian_filter``."""
    if sigma <= 0:
        return maps
    r = int(truncate * sigma + 0.5)
    with full_precision(maps):
        maps = maps.float()
        t = torch.arange(-r, r + 1, dtype=maps.dtype, device=maps.device)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        x = maps.unsqueeze(1)
        x = _symmetric_pad(_symmetric_pad(x, r, 2), r, 3)
        x = F.conv2d(x, kernel.view(1, 1, -1, 1))
        x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x[:, 0]
