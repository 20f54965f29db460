"""The learnable parts of each base model, behind one small interface (:class:`Prompter`).

* :class:`AdaClipPrompter`: AdaCLIP-style hybrid prompts. Static (learned) plus dynamic (projected
  from the image's frozen CLS feature) prompt tokens in the first ``prompt_depth`` blocks of the vision
  and the language branch; per-layer linear projections of patch tokens into the text space and one
  of the CLS; the state x template ensemble as text. Projections start at the identity, so the
  untrained model is zero-shot CLIP.
* :class:`AnomalyClipPrompter`: AnomalyCLIP-style object-agnostic learnable normal/abnormal contexts
  with deep text prompts; v-v attention is attached to the vision tower by the model.
* :class:`WinClipPrompter`: no parameters; the WinCLIP state x template ensemble (zero-shot).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hxpe.model.config import ModelConfig
from hxpe.model.prompts import Kind, PromptSet, ensemble


def _prompt_tokens(depth: int, length: int, width: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(depth, length, width) * 0.02)


def _identity_linear(dim: int) -> nn.Linear:
    layer = nn.Linear(dim, dim)
    nn.init.eye_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Prompter(nn.Module):
    """A base's learnable prompts and projections. Defaults: none of them (WinCLIP)."""

    prompt_set: PromptSet
    text_slots: int = 0  # deep-prompt slots in each sentence
    text_context: int = 0  # learnable context tokens in each sentence
    text_conditioned: bool = False  # text prompts depend on the image
    needs_condition: bool = False  # any prompt depends on the image (frozen CLS pass)

    def visual_prompts(self, cond: torch.Tensor | None, batch: int) -> list[torch.Tensor] | None:
        return None

    def context(self, kind: Kind) -> torch.Tensor | None:
        """Learnable context tokens [c, width] of the normal or abnormal prompt."""
        return None

    def text_deep(self, cond: torch.Tensor | None, n: int) -> list[torch.Tensor] | None:
        """Deep text prompts per block, [n, slots, width]; ``cond`` [n, E] per sequence or None."""
        return None

    def project_patches(self, patches: list[torch.Tensor]) -> list[torch.Tensor]:
        return patches

    def project_cls(self, cls: torch.Tensor) -> torch.Tensor:
        return cls


class AdaClipPrompter(Prompter):
    def __init__(
        self, cfg: ModelConfig, visual_width: int, text_width: int, embed_dim: int
    ) -> None:
        super().__init__()
        a = cfg.adaclip
        self.prompt_set = ensemble(a.template_set, cfg.explain.object_template)
        self.depth, self.length = a.prompt_depth, a.prompt_length
        static, dynamic = "static" in a.prompt_types, "dynamic" in a.prompt_types
        if not (static or dynamic):
            raise ValueError("model.adaclip.prompt_types must hold 'static', 'dynamic' or both.")
        self.vision, self.language = "vision" in a.branches, "language" in a.branches
        self.text_slots = self.length if self.language else 0
        self.text_conditioned = self.language and dynamic
        self.needs_condition = dynamic and (self.vision or self.language)
        self.v_static = (
            _prompt_tokens(self.depth, self.length, visual_width)
            if static and self.vision
            else None
        )
        self.t_static = (
            _prompt_tokens(self.depth, self.length, text_width)
            if static and self.language
            else None
        )
        self.v_dynamic = (
            nn.Linear(embed_dim, self.length * visual_width) if dynamic and self.vision else None
        )
        self.t_dynamic = (
            nn.Linear(embed_dim, self.length * text_width) if dynamic and self.language else None
        )
        self.patch_proj = nn.ModuleList(_identity_linear(embed_dim) for _ in cfg.clip.layers)
        self.cls_proj = _identity_linear(embed_dim)

    @staticmethod
    def _hybrid(
        static: nn.Parameter | None,
        dynamic: nn.Linear | None,
        cond: torch.Tensor | None,
        n: int,
        depth: int,
        length: int,
    ) -> list[torch.Tensor] | None:
        if static is None and dynamic is None:
            return None
        parts = []
        for i in range(depth):
            p = 0.0
            if static is not None:
                p = static[i].expand(n, -1, -1)
            if dynamic is not None:
                if cond is None:
                    raise ValueError("dynamic prompts need the image's CLS feature")
                p = p + dynamic(cond).view(n, length, -1)
            parts.append(p)
        return parts

    def dynamic_visual(self, cond: torch.Tensor) -> torch.Tensor | None:
        """The image-conditioned visual prompt tokens [B, length, width] (before the static part)."""
        return (
            None
            if self.v_dynamic is None
            else self.v_dynamic(cond).view(cond.shape[0], self.length, -1)
        )

    def visual_prompts(self, cond: torch.Tensor | None, batch: int) -> list[torch.Tensor] | None:
        return self._hybrid(self.v_static, self.v_dynamic, cond, batch, self.depth, self.length)

    def text_deep(self, cond: torch.Tensor | None, n: int) -> list[torch.Tensor] | None:
        return self._hybrid(self.t_static, self.t_dynamic, cond, n, self.depth, self.length)

    def project_patches(self, patches: list[torch.Tensor]) -> list[torch.Tensor]:
        return [proj(p) for proj, p in zip(self.patch_proj, patches, strict=True)]

    def project_cls(self, cls: torch.Tensor) -> torch.Tensor:
        return self.cls_proj(cls)


class AnomalyClipPrompter(Prompter):
    def __init__(self, cfg: ModelConfig, text_width: int, text_blocks: int) -> None:
        super().__init__()
        a = cfg.anomalyclip
        if a.text_prompt_depth > text_blocks:
            raise ValueError(
                f"model.anomalyclip.text_prompt_depth {a.text_prompt_depth} exceeds the text "
                f"encoder's {text_blocks} blocks."
            )
        self.prompt_set = PromptSet(
            normal=(a.normal_template,),
            abnormal=(a.abnormal_template,),
            object_template=cfg.explain.object_template,
        )
        self.text_slots, self.text_context = a.text_prompt_length, a.n_ctx
        self.ctx_normal = nn.Parameter(torch.randn(a.n_ctx, text_width) * 0.02)
        self.ctx_abnormal = nn.Parameter(torch.randn(a.n_ctx, text_width) * 0.02)
        self.deep = _prompt_tokens(a.text_prompt_depth, a.text_prompt_length, text_width)

    def context(self, kind: Kind) -> torch.Tensor | None:
        return self.ctx_normal if kind == "normal" else self.ctx_abnormal

    def text_deep(self, cond: torch.Tensor | None, n: int) -> list[torch.Tensor] | None:
        return [d.expand(n, -1, -1) for d in self.deep]


class WinClipPrompter(Prompter):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.prompt_set = ensemble(cfg.winclip.template_set, cfg.explain.object_template)


def make_prompter(
    cfg: ModelConfig, visual_width: int, text_width: int, embed_dim: int, text_blocks: int
) -> Prompter:
    """The prompter of ``cfg.base``."""
    if cfg.base == "adaclip":
        return AdaClipPrompter(cfg, visual_width, text_width, embed_dim)
    if cfg.base == "anomalyclip":
        return AnomalyClipPrompter(cfg, text_width, text_blocks)
    return WinClipPrompter(cfg)


def normalize_all(tokens: list[torch.Tensor]) -> list[torch.Tensor]:
    return [F.normalize(t, dim=-1) for t in tokens]
