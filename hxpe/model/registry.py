"""The base registry: one :class:`BaseSpec` per CLIP base model, in the spirit of timm's registry.

A spec names what a base *is* (its prompter, what it attaches to the vision tower, how its image score
is formed); its arithmetic (logit scale, layer fusion, positional interpolation, CLS path, losses and
their weights, object-word policy, batch size, optimiser) are the keys of its config section
(:class:`hxpe.model.config.BaseArithmetic`), whose defaults are the authors' behaviour.
:class:`hxpe.model.hxpe.HXPEModel` is base-agnostic glue around a spec plus the paper's two
enhancements.

Example:
    >>> sorted(available_bases())
    ['adaclip', 'anomalyclip', 'winclip']
    >>> base_spec("anomalyclip").source
    'zqhang/AnomalyCLIP@45ed4dd'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from hxpe.model.attention import attach_vv_attention
from hxpe.model.bases import AdaClipPrompter, AnomalyClipPrompter, Dims, Prompter
from hxpe.model.config import ModelConfig
from hxpe.model.vision import VisualEncoder

ImageScore = Literal["cls", "hsf"]


@dataclass(frozen=True)
class BaseSpec:
    """What defines a base model.

    Attributes:
        name: the ``model.base`` value.
        source: the authors' repository and commit the defaults follow.
        make_prompter: builds the learnable part from the config and the CLIP's widths.
        attach: changes to the frozen vision tower (e.g. v-v attention), applied once.
        image_score: ``cls`` (CLS vs text) or ``hsf`` (AdaCLIP's hybrid semantic fusion) as a
            function of the config.
        trains: whether the base has parameters to train.
        build: for a base that is a model of its own rather than prompts around CLIP (WinCLIP's
            window re-encoding), builds the whole model from the config; ``make_prompter``,
            ``attach`` and ``image_score`` are then unused.
    """

    name: str
    source: str
    make_prompter: Callable[[ModelConfig, Dims], Prompter] | None
    attach: Callable[[ModelConfig, VisualEncoder], None]
    image_score: Callable[[ModelConfig], ImageScore]
    trains: bool = True
    build: Callable[[ModelConfig], nn.Module] | None = None


_REGISTRY: dict[str, BaseSpec] = {}


def register_base(spec: BaseSpec) -> BaseSpec:
    """Add ``spec`` (a later registration of the same name replaces the earlier one)."""
    _REGISTRY[spec.name] = spec
    return spec


def available_bases() -> list[str]:
    return list(_REGISTRY)


def base_spec(name: str) -> BaseSpec:
    if name not in _REGISTRY:
        raise KeyError(f"Unknown base {name!r}; registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def _no_attachment(cfg: ModelConfig, visual: VisualEncoder) -> None:
    return None


def _attach_dpam(cfg: ModelConfig, visual: VisualEncoder) -> None:
    if cfg.anomalyclip.vv_attention:
        attach_vv_attention(visual.blocks, cfg.anomalyclip.vv_last_n)


register_base(
    BaseSpec(
        name="adaclip",
        source="caoyunkang/AdaCLIP@e27ee32",
        make_prompter=AdaClipPrompter,
        attach=_no_attachment,
        image_score=lambda cfg: "hsf" if cfg.adaclip.hsf else "cls",
    )
)
register_base(
    BaseSpec(
        name="anomalyclip",
        source="zqhang/AnomalyCLIP@45ed4dd",
        make_prompter=AnomalyClipPrompter,
        attach=_attach_dpam,
        image_score=lambda cfg: "cls",
    )
)


def _build_winclip(cfg: ModelConfig) -> nn.Module:
    from hxpe.model.winclip import build_winclip

    return build_winclip(cfg)


register_base(
    BaseSpec(
        name="winclip",
        source="Jeong et al., CVPR 2023 (window re-encoding; pinned against anomalib's WinClipModel)",
        make_prompter=None,
        attach=_no_attachment,
        image_score=lambda cfg: "cls",
        trains=False,
        build=_build_winclip,
    )
)
