"""Settings of stage 05 (evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hxpe.limits import MAX_BATCH_SIZE, MAX_IMAGE_SIZE, MAX_WORKERS, MIN_IMAGE_SIZE


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
    image_size: int = Field(
        518,
        ge=MIN_IMAGE_SIZE,
        le=MAX_IMAGE_SIZE,
        description="Protocol resolution for maps and masks.",
    )
    aupro: Literal["anomalyclip", "exact"] = Field(
        "anomalyclip", description="AUPRO convention reported in the main table."
    )
    aupro_conventions: list[Literal["anomalyclip", "exact"]] = Field(
        default_factory=lambda: ["anomalyclip", "exact"],
        description="AUPRO conventions computed (metrics pixel_aupro_<convention>).",
    )
    aupro_steps: int = Field(
        200, ge=2, le=100_000, description="Thresholds of the 'anomalyclip' AUPRO convention."
    )
    fpr_limit: float = Field(0.3, gt=0.0, le=1.0)
    split: str = Field("test", description="Index split evaluated on the target datasets.")
    batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Inference precision: auto = bf16 autocast on CUDA, fp32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the backbones (CUDA only).")
    num_workers: int = Field(2, ge=0, le=MAX_WORKERS)
    map_dtype: Literal["float16", "float32"] = Field(
        "float32",
        description="dtype of the stored maps. Metrics always come from float32 maps: a float16 "
        "store is scored before its maps are cast (half the disk; recomputing metrics with other "
        "settings then re-runs inference).",
    )
    metrics_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where pixel metrics run; auto = CUDA when available."
    )
    hsf_rng: Literal["per_image", "stream"] = Field(
        "per_image",
        description="HSF k-means draws (sklearn): per_image = every image from a fresh "
        "RandomState(adaclip.hsf_seed), so an image's score does not depend on the images before "
        "it (hxpe predict gives the protocol's score); stream = the authors' one stream seeded "
        "once per pass (scores depend on the test order and batch).",
    )

    @model_validator(mode="after")
    def _check(self) -> EvaluationConfig:
        if self.aupro not in self.aupro_conventions:
            raise ValueError(
                f"evaluation.aupro is {self.aupro!r} but evaluation.aupro_conventions "
                f"{self.aupro_conventions} does not compute it; add it to the list."
            )
        if not 0 < self.fpr_limit <= 1:
            raise ValueError(f"evaluation.fpr_limit must be in (0, 1]; got {self.fpr_limit}")
        return self
