"""The base interface: what the glue (:class:`hxpe.model.model.HXPEModel`) needs from a CLIP base
model, the registry the bases enter where they are defined, and what every model returns.

A base is one class registered with :func:`register_base` at its definition (timm style), in its own
module of :mod:`hxpe.model.bases`, beside its config section (a :class:`BaseArithmetic`, the
``model.<base>`` keys) and its training recipes. There are two kinds, and the interface names both:

* a **prompted base** (:class:`PromptBase`: AdaCLIP, AnomalyCLIP) is the learnable part around a
  frozen CLIP: the glue assembles it with CLIP's towers and the paper's two enhancements and asks it
  for the image conditioning, the visual and text prompts, the patch and CLS projections and the image
  feature of the score;
* a **training-free base** (:class:`TrainingFreeBase`: WinCLIP) is a zero-shot model of its own with
  the same forward interface and no parameters to train.

Both answer :meth:`Base.build`, so :func:`hxpe.model.model.build_model` never asks which kind it holds.
The arithmetic every base declares (logit scale, layer fusion, positional interpolation, CLS path,
image loss and loss weights, batch size, optimiser) is :class:`BaseArithmetic`, the glue's only view of
a base's config section (``ModelConfig.arithmetic``).

Example:
    >>> import hxpe.model.bases  # registers the bases
    >>> available_bases()
    ['adaclip', 'anomalyclip', 'winclip']
    >>> base_class("anomalyclip").source, base_class("winclip").trains
    ('zqhang/AnomalyCLIP@45ed4dd', False)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hxpe.limits import MAX_BATCH_SIZE
from hxpe.model.clip_tower import ClipConfig, VisualEncoder, VisualFeatures
from hxpe.model.dinov2_prompt import VfmConfig, VfmSteps
from hxpe.model.explainable import ExplainConfig, Kind, PromptSet

PROMPT_INIT_STD = 0.02  # both authors: nn.init.normal_(std=0.02)

Fusion = Literal["sum_probs", "mean_probs", "mean_logits"]
LossWeights = dict[Literal["focal", "dice", "image"], float]


def term_weights(focal: float, dice: float, image: float) -> LossWeights:
    """The weights of the focal, dice and image loss terms."""
    return {"focal": focal, "dice": dice, "image": image}


class BaseArithmetic(BaseModel):
    """Arithmetic every base declares (defaults: its authors'; hxpe/LEDGER.md has file:line).

    Each base's config section subclasses it and overrides the defaults.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(
        0.07, gt=0.0, description="Similarity temperature τ (logits = cos/τ)."
    )
    layer_fusion: Fusion = Field(
        "mean_probs",
        description="sum_probs: Σ_l (up(p1)+1−up(p0))/2; mean_probs: the same averaged; "
        "mean_logits: softmax(mean_l up(logits)) (the per-layer loss maps are then "
        "softmax(up(logits)) instead of up(softmax)).",
    )
    align_corners: bool = Field(False, description="Bilinear upsampling of the layer maps.")
    pos_interpolation: Literal["bilinear", "bicubic"] = Field(
        "bicubic", description="Positional-embedding resize to a non-native grid."
    )
    cls_path: Literal["ln_post", "no_ln_post"] = Field(
        "ln_post", description="Score CLS: ln_post(x[0]) @ proj, or x[0] @ proj (AnomalyCLIP)."
    )
    object_word: Literal["generic", "class_name"] = Field(
        "generic", description="{obj} in prompts: model.object_name, or the image's class name."
    )
    prompt_cast: Literal["float16", "none"] = Field(
        "none", description="Round injected prompt tokens to float16 (the authors' .half() casts)."
    )
    image_loss: Literal["ce", "focal"] = Field("ce", description="Loss on the image score.")
    loss_weights: LossWeights = Field(default_factory=lambda: term_weights(1.0, 1.0, 1.0))
    batch_size: int = Field(
        8,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="Training batch size (train.batch_size overrides).",
    )
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="train.optimizer: base.")


class ModelSettings(Protocol):
    """The generic part of the model configuration a base reads (``hxpe.model.config.ModelConfig``
    has it); a base reads its own section through a protocol that adds it."""

    clip: ClipConfig
    explain: ExplainConfig
    vfm: VfmConfig
    object_name: str
    random_init_seed: int


@dataclass(frozen=True)
class Dims:
    """Widths of the CLIP at hand."""

    visual_width: int
    text_width: int
    embed_dim: int
    text_blocks: int


def prompt_list(depth: int, length: int, width: int) -> nn.ParameterList:
    """``depth`` learnable prompts [length, width], drawn as both authors draw them."""
    return nn.ParameterList(
        nn.Parameter(torch.randn(length, width) * PROMPT_INIT_STD) for _ in range(depth)
    )


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
        score_parts: the base's image-feature intermediates (AdaCLIP's hybrid semantic fusion:
            :class:`hxpe.model.bases.adaclip.HsfParts`), or None when the score uses the CLS.
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
    score_parts: object | None
    score_feature: torch.Tensor


@dataclass
class ModelOutput:
    """What every model's forward returns (:class:`hxpe.model.model.HXPEModel`, a training-free
    base's model).

    Attributes:
        image_score: [B] in [0, 1].
        anomaly_map: [B, H, W] at input resolution, smoothed (Gaussian σ = ``model.sigma``); its
            range is the base's fusion's ([0, 1], or [0, L] for AnomalyCLIP's sum over L layers).
        layer_maps: per selected CLIP layer, (normal, abnormal) probabilities [B, 2, h, w].
        vfm_prompt: the calibrated DINOv2 prompt map [B, h, w] in [0, 1), or None.
        image_logits: [B, 2] (normal, abnormal) logits of the image score (for the loss).
        layer_logits: per layer the (normal, abnormal) logits [B, 2, h, w] (for the loss).
        text_features: [B, 2, D] the unit (normal, abnormal) text embeddings used.
        image_features: [B, D] the unit CLS feature of the score (before the base's fusion).
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


Settings = TypeVar("Settings", bound=ModelSettings)


class Base(ABC):
    """A registered base model (class attributes name it; :func:`register_base` enters it)."""

    name: ClassVar[str]  # the model.base value (and the name of its config section)
    source: ClassVar[str]  # the authors' repository@commit (or paper) the defaults follow
    trains: ClassVar[bool]  # whether it has parameters to train

    @classmethod
    @abstractmethod
    def build(cls, cfg: Settings, assemble: Callable[[Settings], nn.Module]) -> nn.Module:
        """The model of this base. ``assemble`` is the glue's builder of
        :class:`hxpe.model.model.HXPEModel` (backbones loaded, this base's prompts around them): a
        prompted base hands it the config; a training-free base builds a model of its own."""


class PromptBase(Base, nn.Module):
    """A prompted base: its learnable prompts and projections, and the image conditioning and image
    feature they work with. Defaults: none of them (the CLS scores, nothing is prompted).

    Deep text prompts are returned per text block (``None`` = that block is not prompted); each
    replaces the tokens right after SOT (:class:`hxpe.model.clip_tower.TextEncoder`). With
    ``text_layout: overwrite`` (both authors) those are word or context tokens; with ``slots`` they
    are dedicated placeholders.
    """

    trains: ClassVar[bool] = True
    prompt_set: PromptSet
    text_slots: int = 0  # dedicated deep-prompt placeholder slots in each sentence
    text_context: int = 0  # learnable context tokens in each sentence
    text_conditioned: bool = False  # text prompts depend on the image
    # the text blocks (0-based) whose input a deep prompt of ``text_deep_length`` tokens replaces
    # right after SOT (the slots in layout ``slots``; context or word tokens in ``overwrite``)
    text_deep_blocks: tuple[int, ...] = ()
    text_deep_length: int = 0
    needs_condition: bool = False  # any prompt depends on the image (frozen CLS pass)

    def __init__(self, cfg: ModelSettings, dims: Dims) -> None:
        super().__init__()

    @classmethod
    def build(cls, cfg: Settings, assemble: Callable[[Settings], nn.Module]) -> nn.Module:
        return assemble(cfg)

    def attach(self, visual: VisualEncoder) -> None:
        """Changes to the frozen vision tower (e.g. v-v attention), applied once at assembly."""
        return None

    def condition(self, visual: VisualEncoder, images: torch.Tensor) -> torch.Tensor | None:
        """The image feature [B, E] dynamic prompts are generated from, or None (no grad)."""
        return None

    def visual_prompts(self, cond: torch.Tensor | None, batch: int) -> list[torch.Tensor] | None:
        """Per prompted vision block (from the first) the prompt tokens [B, P, width], or None."""
        return None

    def context(self, kind: Kind) -> torch.Tensor | None:
        """Learnable context tokens [c, width] of the normal or abnormal prompt."""
        return None

    def text_deep(self, cond: torch.Tensor | None, n: int) -> list[torch.Tensor | None] | None:
        """Per text block the deep prompt [n, length, width] or None; ``cond`` [n, E] or None."""
        return None

    def project_patches(self, feats: VisualFeatures) -> list[torch.Tensor]:
        """Per selected layer the patch tokens in the text space [B, N, E] (not normalised)."""
        return feats.patches

    def project_cls(self, cls: torch.Tensor) -> torch.Tensor:
        """The CLS feature in the text space [B, E] (not normalised)."""
        return cls

    def image_feature(
        self, cls: torch.Tensor, patches: list[torch.Tensor], logits: list[torch.Tensor]
    ) -> tuple[torch.Tensor, object | None]:
        """The unit image feature [B, E] the image score compares with the text, and its
        intermediates (None here: the unit CLS ``cls`` itself)."""
        return cls, None

    def reset_rng(self, seed: int | None = None) -> None:
        """Re-seed the base's own RNG of the image score, if it has one."""
        return None

    @contextmanager
    def same_rng_per_image(self) -> Iterator[None]:
        """Within the block every image's score draws from a freshly seeded RNG (if any)."""
        yield


class TrainingFreeBase(Base):
    """A training-free base: a zero-shot model of its own (no prompts, nothing to train), built
    from the config alone; its forward has :class:`hxpe.model.model.HXPEModel`'s interface and
    returns a :class:`ModelOutput`."""

    trains: ClassVar[bool] = False

    @classmethod
    def build(cls, cfg: Settings, assemble: Callable[[Settings], nn.Module]) -> nn.Module:
        return cls.zero_shot_model(cfg)

    @classmethod
    @abstractmethod
    def zero_shot_model(cls, cfg: ModelSettings) -> nn.Module:
        """Load the backbone named by ``cfg`` (frozen) and build the zero-shot model around it."""


Section = TypeVar("Section", bound=BaseArithmetic)


def own_section(cfg: ModelSettings, name: str, kind: type[Section]) -> Section:
    """A base's own config section ``model.<name>`` (of class ``kind``); read only by that base."""
    section = getattr(cfg, name, None)
    if not isinstance(section, kind):
        raise TypeError(
            f"The model configuration has no model.{name} section of type {kind.__name__} "
            f"(got {type(section).__name__}); build base {name!r} from a hxpe.model.config.ModelConfig."
        )
    return section


_REGISTRY: dict[str, type[Base]] = {}
B = TypeVar("B", bound=type[Base])


def register_base(cls: B) -> B:
    """Class decorator: enter a base under its ``name`` (a later one of the same name replaces it)."""
    _REGISTRY[cls.name] = cls
    return cls


def available_bases() -> list[str]:
    return list(_REGISTRY)


def base_class(name: str) -> type[Base]:
    if name not in _REGISTRY:
        raise KeyError(f"Unknown base {name!r}; registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def prompt_base(name: str) -> type[PromptBase]:
    """The registered prompted base ``name``; a training-free one is refused (it is a model of
    its own: :func:`hxpe.model.model.build_model` builds it)."""
    cls = base_class(name)
    if not issubclass(cls, PromptBase):
        raise ValueError(
            f"Base {name!r} is training-free, a model of its own; build it with "
            "hxpe.model.model.build_model, not HXPEModel."
        )
    return cls
