"""The learnable parts of each base model, behind one small interface (:class:`Prompter`).

* :class:`AdaClipPrompter`: AdaCLIP's hybrid prompts with its parameter layout (so its checkpoints
  load by renaming keys). Static (learned) plus dynamic (``Linear`` heads on the image's frozen CLS
  feature) prompt tokens in the first ``prompt_depth`` blocks of the vision and language branches;
  per output layer a patch head ``Linear(vision width -> embed)`` on the raw block tokens, and a CLS
  head; the state x template ensemble as text.
* :class:`AnomalyClipPrompter`: AnomalyCLIP's object-agnostic learnable normal/abnormal contexts with
  deep text prompts; v-v attention is attached to the vision tower by the registry.

Deep text prompts are returned per text block (``None`` = that block is not prompted); each replaces
the tokens right after SOT (:class:`hxpe.model.text.TextEncoder`). With ``text_layout: overwrite``
(both authors) those are word or context tokens; with ``slots`` they are dedicated placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hxpe.model.config import ModelConfig
from hxpe.model.prompts import Kind, PromptSet, ensemble
from hxpe.model.vision import VisualFeatures

PROMPT_INIT_STD = 0.02  # both authors: nn.init.normal_(std=0.02)


@dataclass(frozen=True)
class Dims:
    """Widths of the CLIP at hand."""

    visual_width: int
    text_width: int
    embed_dim: int
    text_blocks: int


def _prompt_list(depth: int, length: int, width: int) -> nn.ParameterList:
    return nn.ParameterList(
        nn.Parameter(torch.randn(length, width) * PROMPT_INIT_STD) for _ in range(depth)
    )


def _identity_linear(dim: int) -> nn.Linear:
    layer = nn.Linear(dim, dim)
    nn.init.eye_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Prompter(nn.Module):
    """A base's learnable prompts and projections. Defaults: none of them (WinCLIP)."""

    prompt_set: PromptSet
    text_slots: int = 0  # dedicated deep-prompt placeholder slots in each sentence
    text_context: int = 0  # learnable context tokens in each sentence
    text_conditioned: bool = False  # text prompts depend on the image
    # the text blocks (0-based) whose input a deep prompt of ``text_deep_length`` tokens replaces
    # right after SOT (the slots in layout ``slots``; context or word tokens in ``overwrite``)
    text_deep_blocks: tuple[int, ...] = ()
    text_deep_length: int = 0
    needs_condition: bool = False  # any prompt depends on the image (frozen CLS pass)

    def visual_prompts(self, cond: torch.Tensor | None, batch: int) -> list[torch.Tensor] | None:
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
        return cls


class AdaClipPrompter(Prompter):
    """AdaCLIP's prompts (adaclip.py:35-143, 375-397); parameter names mirror its checkpoint."""

    def __init__(self, cfg: ModelConfig, dims: Dims) -> None:
        super().__init__()
        a = cfg.adaclip
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
            _prompt_list(self.depth, self.length, cv) if static and self.vision else None
        )
        self.text_static = (
            _prompt_list(self.depth, self.length, ct) if static and self.language else None
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

    def _hybrid(
        self,
        static: nn.ParameterList | None,
        dynamic: nn.ModuleList | None,
        cond: torch.Tensor | None,
        n: int,
        blocks: range,
    ) -> list[torch.Tensor] | None:
        if static is None and dynamic is None:
            return None
        dyn = None
        if dynamic is not None:
            if cond is None:
                raise ValueError("dynamic prompts need the image's CLS feature")
            dyn = torch.stack([head(cond) for head in dynamic], dim=1)  # [n, length, C]
        parts = []
        for i in blocks:
            if static is None:
                parts.append(dyn)
            elif dyn is None:
                parts.append(static[i].expand(n, -1, -1))
            else:
                parts.append(dyn + static[i].expand(n, -1, -1))
        return parts

    def visual_prompts(self, cond: torch.Tensor | None, batch: int) -> list[torch.Tensor] | None:
        return self._hybrid(self.visual_static, self.visual_dynamic, cond, batch, range(self.depth))

    def text_deep(self, cond: torch.Tensor | None, n: int) -> list[torch.Tensor | None] | None:
        if self.layout == "slots":
            return self._hybrid(self.text_static, self.text_dynamic, cond, n, range(self.depth))
        later = self._hybrid(self.text_static, self.text_dynamic, cond, n, range(1, self.depth))
        return None if later is None else [None, *later]

    def project_patches(self, feats: VisualFeatures) -> list[torch.Tensor]:
        source = feats.raw_patches if self.patch_head == "raw_tokens" else feats.patches
        return [head(p) for head, p in zip(self.patch_heads, source, strict=True)]

    def project_cls(self, cls: torch.Tensor) -> torch.Tensor:
        return self.cls_head(cls)


class AnomalyClipPrompter(Prompter):
    """AnomalyCLIP's prompt learner (prompt_ensemble.py:85-264)."""

    def __init__(self, cfg: ModelConfig, dims: Dims) -> None:
        super().__init__()
        a = cfg.anomalyclip
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
        self.deep = _prompt_list(n_deep, a.text_prompt_length, width)

    def context(self, kind: Kind) -> torch.Tensor | None:
        return self.ctx_normal if kind == "normal" else self.ctx_abnormal

    def text_deep(self, cond: torch.Tensor | None, n: int) -> list[torch.Tensor | None] | None:
        deep = [d.expand(n, -1, -1) for d in self.deep]
        return [None, *deep] if self.layout == "overwrite" else deep
