"""Settings of the model (stage 04/05) and of training (stage 04).

Every choice the paper leaves open is a named key here; ``hxpe/LEDGER.md`` maps each to its source.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ClipConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field("ViT-L-14-336-quickgelu", description="open_clip model name.")
    pretrained: str | None = Field(
        "openai", description="open_clip pretrained tag; null = random init."
    )
    config_file: str | None = Field(
        None,
        description="Extra open_clip JSON model config (tiny test models), registered before build.",
    )
    image_size: int = Field(
        518, description="Input resolution; positional embeddings interpolated."
    )
    layers: list[int] = Field(
        default_factory=lambda: [6, 12, 18, 24],
        description="1-based blocks whose patch tokens are used.",
    )


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    clip: ClipConfig = Field(default_factory=ClipConfig)
    base: Literal["adaclip", "anomalyclip", "winclip"] = "adaclip"


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    epochs: int = 5
    lr: float = 0.01
    batch_size: int | None = Field(None, description="None = the base's own default.")
