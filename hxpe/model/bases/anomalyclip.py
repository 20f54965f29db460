"""AnomalyCLIP (Zhou et al., ICLR 2024; zqhang/AnomalyCLIP@45ed4dd) as a base: its config section,
its object-agnostic prompts with deep text prompts, its v-v attention, and its training recipes.

* **Prompts** (:class:`AnomalyClipPrompter`, AnomalyCLIP's prompt learner): learnable normal and
  abnormal contexts before ``"{obj}."`` / ``"damaged {obj}."`` and deep text prompts in the first
  ``text_prompt_depth`` text blocks.
* **v-v attention** (DPAM) on the last ``vv_last_n`` vision blocks, attached to CLIP's vision tower
  (:func:`hxpe.model.clip_tower.attach_vv_attention`); the patch tokens come from its stream.
* **Image score**: the CLS ``x[0] @ proj`` (no ``ln_post``) against the text; **fusion** of the
  layer maps ``sum_probs``; **losses** with λ = 4 on the map terms (the section's defaults).
* **Recipes** ``anomalyclip`` (the released ``train.sh``/``test.sh``, which pass
  ``--features_list 24``: the baseline row) and ``anomalyclip_paper`` (the same with the paper's and
  argparse's four layers ``[6, 12, 18, 24]``, a named variant: the scripts win by default).

Example:
    >>> from hxpe.model.recipes import recipe
    >>> recipe("anomalyclip").layers, recipe("anomalyclip_paper").layers
    ('last', 'all')
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from hxpe.model.bases.base import (
    PROMPT_INIT_STD,
    BaseArithmetic,
    Dims,
    Fusion,
    LossWeights,
    ModelSettings,
    PromptBase,
    own_section,
    prompt_list,
    register_base,
    term_weights,
)
from hxpe.model.clip_tower import VisualEncoder, attach_vv_attention
from hxpe.model.explainable import Kind, PromptSet
from hxpe.model.recipes import Recipe, register_recipe


class AnomalyClipConfig(BaseArithmetic):
    """AnomalyCLIP-style base: object-agnostic contexts, deep text prompts, v-v attention."""

    temperature: float = 0.07
    layer_fusion: Fusion = "sum_probs"
    align_corners: bool = False
    pos_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    cls_path: Literal["ln_post", "no_ln_post"] = "no_ln_post"
    object_word: Literal["generic", "class_name"] = "generic"
    prompt_cast: Literal["float16", "none"] = "float16"
    image_loss: Literal["ce", "focal"] = "ce"
    loss_weights: LossWeights = Field(
        default_factory=lambda: term_weights(4.0, 4.0, 1.0),
        description="λ = 4 on the map terms (train.py `lam = 4`).",
    )
    batch_size: int = 8
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    text_layout: Literal["overwrite", "slots"] = Field(
        "overwrite",
        description="overwrite: depth−1 deep prompts overwrite context tokens 1..length after SOT "
        "from text block 2 (AnomalyCLIP); slots: `depth` prompts in dedicated slots from block 1.",
    )

    n_ctx: int = Field(
        12, ge=1, le=64, description="Learnable context tokens per normal/abnormal prompt."
    )
    text_prompt_length: int = Field(
        4, ge=0, le=64, description="Deep text prompt tokens (t_n_ctx)."
    )
    text_prompt_depth: int = Field(
        9, ge=0, le=64, description="Text blocks receiving deep prompts."
    )
    normal_template: str = Field("{obj}.", description="After the contexts.")
    abnormal_template: str = Field("damaged {obj}.", description="After the contexts.")
    vv_attention: bool = Field(True, description="v-v attention (DPAM) switch.")
    vv_last_n: int = Field(
        19, ge=0, le=64, description="v-v attention on the last N blocks (DPAM_layer=20)."
    )


@register_base
class AnomalyClipPrompter(PromptBase):
    """AnomalyCLIP's prompt learner (prompt_ensemble.py:85-264) and its v-v attention."""

    name = "anomalyclip"
    source = "zqhang/AnomalyCLIP@45ed4dd"

    def __init__(self, cfg: ModelSettings, dims: Dims) -> None:
        super().__init__(cfg, dims)
        a = own_section(cfg, self.name, AnomalyClipConfig)
        self.settings = a
        if a.text_prompt_depth > dims.text_blocks:
            raise ValueError(
                f"model.anomalyclip.text_prompt_depth {a.text_prompt_depth} exceeds the text "
                f"encoder's {dims.text_blocks} blocks."
            )
        if a.text_layout == "overwrite" and a.text_prompt_length > a.n_ctx:
            raise ValueError(
                f"model.anomalyclip.text_prompt_length {a.text_prompt_length} > n_ctx {a.n_ctx}: "
                f"layout 'overwrite' writes the deep prompts over the context tokens."
            )
        self.prompt_set = PromptSet(
            normal=(a.normal_template,),
            abnormal=(a.abnormal_template,),
            object_template=cfg.explain.object_template,
        )
        self.layout = a.text_layout
        self.text_context = a.n_ctx
        self.text_slots = a.text_prompt_length if a.text_layout == "slots" else 0
        width = dims.text_width
        self.ctx_normal = nn.Parameter(torch.randn(a.n_ctx, width) * PROMPT_INIT_STD)
        self.ctx_abnormal = nn.Parameter(torch.randn(a.n_ctx, width) * PROMPT_INIT_STD)
        n_deep = a.text_prompt_depth - (1 if a.text_layout == "overwrite" else 0)
        first = 1 if a.text_layout == "overwrite" else 0
        self.text_deep_blocks = tuple(range(first, a.text_prompt_depth))
        self.text_deep_length = a.text_prompt_length
        self.deep = prompt_list(n_deep, a.text_prompt_length, width)

    def attach(self, visual: VisualEncoder) -> None:
        """v-v attention (DPAM) on the last ``vv_last_n`` vision blocks, when switched on."""
        if self.settings.vv_attention:
            attach_vv_attention(visual.blocks, self.settings.vv_last_n)

    def context(self, kind: Kind) -> torch.Tensor | None:
        return self.ctx_normal if kind == "normal" else self.ctx_abnormal

    def text_deep(self, cond: torch.Tensor | None, n: int) -> list[torch.Tensor | None] | None:
        deep: list[torch.Tensor | None] = [d.expand(n, -1, -1) for d in self.deep]
        return [None, *deep] if self.layout == "overwrite" else deep


_ANOMALYCLIP_ANCHORS = {
    "epochs": "train.py:130 (default 15); train.sh --epoch 15",
    "lr": "train.py:131 (default 0.001); train.sh passes none",
    "batch_size": "train.py:132 (default 8); train.sh --batch_size 8",
    "optimizer": "train.py:44 torch.optim.Adam(..., betas=(0.5, 0.999)), no weight decay",
    "augmentation": "none (dataset.py:59-78)",
}


def _anomalyclip_recipe(name: str, layers: Literal["all", "last"], layers_anchor: str) -> Recipe:
    """AnomalyCLIP's released recipe with the feature layers ``layers`` (anchored by
    ``layers_anchor``)."""
    return Recipe(
        name=name,
        source="zqhang/AnomalyCLIP@45ed4dd (train.sh, test.sh)",
        epochs=15,
        lr=0.001,
        batch_size=8,
        optimizer="adam",
        betas=(0.5, 0.999),
        weight_decay=0.0,
        layers=layers,
        anchors=_ANOMALYCLIP_ANCHORS | {"layers": layers_anchor},
    )


register_recipe(
    _anomalyclip_recipe(
        "anomalyclip",
        "last",
        "train.sh and test.sh --features_list 24 (author, issue #82: all results)",
    )
)
register_recipe(
    _anomalyclip_recipe(
        "anomalyclip_paper",
        "all",
        "train.py:128, test.py:184 default [6, 12, 18, 24]; the paper before v10",
    )
)
