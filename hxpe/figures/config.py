"""Settings of stage 06 (figures, :mod:`hxpe.figures`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FiguresConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    formats: list[str] = Field(default_factory=lambda: ["png", "pdf"])
    dpi: int = Field(150, ge=10, le=1200)
    images_per_dataset: int = Field(
        6, ge=1, le=100, description="Rows of the qualitative grid per dataset."
    )
    cards_per_kind: int = Field(
        2, ge=1, le=100, description="Explanation cards per kind (hit, miss, false alarm)."
    )
    comparison_rows: int = Field(
        4,
        ge=1,
        le=100,
        description="Anomalous images in the HXPE vs learnable-only vs WinCLIP figure.",
    )
    learnable_variant: str | None = Field(
        None,
        description="The 'learnable-only' variant; None = the variant with the main variant's "
        "base and both enhancements (explain, vfm) disabled.",
    )
    winclip_variant: str | None = Field(
        None, description="The WinCLIP-style variant; None = the first variant with base winclip."
    )
    metrics: list[str] | None = Field(
        None,
        description="Metrics of the per-dataset bars; None = image AUROC/AP, pixel AUROC and "
        "pixel AUPRO in the evaluation.aupro convention.",
    )
    word_examples: int = Field(
        3,
        ge=1,
        le=100,
        description="Images of the leave-one-word-out figure (the only inference of stage 06).",
    )
