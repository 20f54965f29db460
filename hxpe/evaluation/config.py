"""Settings of stage 05 (evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Direction(BaseModel):
    """One cross-dataset direction: train on ``train``, test zero-shot on each of ``test``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    train: str
    test: list[str]


class EvaluationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directions: list[Direction] = Field(
        default_factory=lambda: [
            Direction(
                name="mvtec_to_others",
                train="mvtec",
                test=["visa", "mpdd", "btad", "ksdd", "dagm", "dtd"],
            ),
            Direction(name="visa_to_mvtec", train="visa", test=["mvtec"]),
        ]
    )
    image_size: int = Field(518, description="Protocol resolution for maps and masks.")
    sigma: float = Field(4.0, description="Gaussian smoothing of anomaly maps (pixels).")
    aupro: Literal["anomalyclip", "exact"] = Field(
        "anomalyclip", description="AUPRO convention reported in the main table."
    )
    fpr_limit: float = 0.3
    batch_size: int = 8
    num_workers: int = 2
    map_dtype: Literal["float16", "float32"] = "float16"
