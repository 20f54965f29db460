"""Settings of stage 06 (figures)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FiguresConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    formats: list[str] = Field(default_factory=lambda: ["png", "pdf"])
    dpi: int = 150
    images_per_dataset: int = Field(6, description="Rows of the qualitative grid per dataset.")
    cards_per_kind: int = Field(
        2, description="Explanation cards per kind (hit, miss, false alarm)."
    )
