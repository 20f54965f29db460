"""Settings of stages 02 (VLM descriptions) and 03 (LLM extraction and verdict).

Backend engine options live in ``options`` (see each backend's module docstring for the keys it
reads); everything that changes a model's output is also part of the cache key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hxpe.limits import MAX_TOKENS


class DescribeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["vllm", "transformers", "classical", "replay"] = "vllm"
    model_id: str = "Qwen/Qwen2-VL-72B-Instruct-AWQ"
    revision: str | None = None
    template: str = Field("describe_v1", description="Prompt template id (hxpe/agent/templates/).")
    noref_template: str = Field(
        "describe_noref_v1",
        description="Template of the no-reference rule (the VLM sees the test image alone).",
    )
    temperature: float = Field(0.0, ge=0.0)
    max_new_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    options: dict[str, Any] = Field(default_factory=dict, description="Backend engine options.")
    seed: int = Field(0, description="Sampling seed (attempt k uses seed + k).")
    max_retries: int = Field(
        2, ge=0, description="Extra attempts after an empty, refused or overlong description."
    )
    retry_temperature: float = Field(
        0.7, ge=0.0, description="Temperature of retries (greedy decoding would repeat itself)."
    )
    batch_size: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="Images per engine call; the cache is appended after each batch. vLLM runs "
        "max_num_seqs of them at a time, so >= 256 keeps its batch full to the end of each call.",
    )
    commit_seconds: float = Field(
        120.0,
        gt=0,
        description="Calls are sized to finish in about this time (at most batch_size items), "
        "and their records committed: a kill loses at most this much work.",
    )


class ExtractConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["vllm", "transformers", "rules", "replay"] = "vllm"
    model_id: str = "Qwen/Qwen2.5-7B-Instruct"
    revision: str | None = None
    template: str = "extract_v1"
    temperature: float = Field(0.0, ge=0.0)
    max_new_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    max_retries: int = Field(2, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(0, description="Sampling seed (attempt k uses seed + k).")
    retry_temperature: float = Field(0.7, ge=0.0, description="Temperature of retries.")
    batch_size: int = Field(256, ge=1, description="Descriptions per engine call (>= 256 on vLLM).")
    commit_seconds: float = Field(
        120.0, gt=0, description="Calls are sized to finish in about this time (see describe)."
    )
    max_phrase_tokens: int = Field(
        20, ge=1, description="Longest phrase in CLIP tokens; longer ones are truncated."
    )


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    describe: DescribeConfig = Field(default_factory=DescribeConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    splits: list[str] = Field(
        default_factory=lambda: ["test"],
        description="Index splits that get descriptions (training uses the auxiliary test split).",
    )
    anti_false_alarm: Literal["llm", "llm_and_vlm"] = Field(
        "llm_and_vlm",
        description="Verdict rule: the LLM's judgement alone, or also require the VLM not to say 'No anomaly'.",
    )
