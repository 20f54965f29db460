"""Settings of stage 01 (data preparation)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hxpe.limits import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

DatasetKind = Literal["mvtec", "visa", "mpdd", "btad", "ksdd", "dagm", "dtd", "folder", "demo"]


class DatasetSource(BaseModel):
    """One dataset to index: its name in results/, its kind (layout) and where it lies."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name used in results/<profile>/index/<name>/ and in tables.")
    kind: DatasetKind = Field(description="On-disk layout; selects the index builder.")
    root: str | None = Field(
        None,
        description="Dataset root. For kind 'demo' it defaults to results/<profile>/data/<name>.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Builder options (e.g. folder dataset's normal_dir)."
    )
    prefer_roots: list[str] = Field(
        default_factory=list,
        description="Roots tried before `root`, in order; the first that exists is indexed (the "
        "authors' prepared KSDD/DAGM trees, whose split is theirs file for file).",
    )


class DemoDataConfig(BaseModel):
    """The embedded demo dataset (hxpe.data.demo)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    image_size: int = Field(128, ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)
    n_train_good: int = Field(4, ge=1, le=10_000)
    n_test_good: int = Field(3, ge=1, le=10_000)
    n_test_per_defect: int = Field(2, ge=1, le=10_000)
    aux_classes: list[str] = Field(default_factory=lambda: ["brick", "washer", "coin"])
    target_classes: list[str] = Field(default_factory=lambda: ["gravel", "grass", "bracket"])


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: list[DatasetSource] = Field(default_factory=list)
    demo: DemoDataConfig | None = Field(None, description="Generate the demo dataset first.")
    allow_count_mismatch: bool = Field(
        False, description="Accept per-class counts that differ from the official release."
    )
    reference_rule: Literal["first_normal_train", "none"] = Field(
        "first_normal_train",
        description="Normal reference per class for the VLM and the DINOv2 prompts (LEDGER.md §4 r1).",
    )
