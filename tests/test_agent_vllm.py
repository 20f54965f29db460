"""The vLLM backend against a stand-in ``vllm`` module: request building and the structured-output shim.

The stand-in only records what the backend sends; vLLM itself is CUDA-only and not installed here.
"""

from __future__ import annotations

import json
import sys

import pytest

from hxpe.agent import load_descriptions, run_describe
from hxpe.agent.backend_base import DescribeRequest, ExtractRequest, Sampling
from hxpe.agent.backend_vllm import (
    VllmDescriber,
    VllmExtractor,
    import_vllm,
    settings_for,
    structured_output_kwargs,
)
from hxpe.agent.config import AgentConfig, DescribeConfig, ExtractConfig
from hxpe.agent.schema import Extraction
from hxpe.agent.templates import load_template
from hxpe.agent.testing import (
    planted_index,
    save_tiny_qwen2,
    save_tiny_qwen2_vl,
    stand_in_vllm,
    texture_crop,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return save_tiny_qwen2_vl(root / "vl"), save_tiny_qwen2(root / "lm")


def _install(monkeypatch, vllm):
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", vllm.sampling_params)


def test_describe_requests(models, monkeypatch):
    vllm = stand_in_vllm("new")
    _install(monkeypatch, vllm)
    cfg = DescribeConfig(
        backend="vllm", model_id=str(models[0]), seed=5, options={"gpu_memory_utilization": 0.85}
    )
    describer = VllmDescriber.from_config(cfg)
    ((_, engine),) = vllm.calls
    assert engine["model"] == str(models[0]) and engine["seed"] == 5
    assert engine["limit_mm_per_prompt"] == {"image": 2, "video": 0}
    assert engine["tensor_parallel_size"] == 1 and engine["max_model_len"] == 8192
    assert engine["mm_processor_kwargs"] == {"min_pixels": 200704, "max_pixels": 1003520}
    assert engine["gpu_memory_utilization"] == 0.85

    ref, test = texture_crop(0, 0), texture_crop(4, 4)
    prompt = load_template("describe_v1").render(class_name="tile")
    req = DescribeRequest("d/tile/test/good/000", "tile", prompt, test, ref)
    built = describer.request(req)
    assert built["multi_modal_data"]["image"][0] is ref
    assert built["multi_modal_data"]["image"][1] is test
    assert built["prompt"].count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert built["prompt"].endswith("<|im_start|>assistant\n") and prompt in built["prompt"]

    (gen,) = describer.describe([req], Sampling(0.0, 256, 5))
    assert (gen.text, gen.finish_reason) == ("No anomaly", "stop")
    _, prompts, params = vllm.calls[-1]
    assert len(prompts) == 1
    assert params.kwargs == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 256, "seed": 5}


def test_run_describe_through_vllm(models, monkeypatch, tmp_path):
    vllm = stand_in_vllm("new", reply="A dark scratch in the upper left.")
    _install(monkeypatch, vllm)
    cfg = AgentConfig.model_validate(
        {
            "describe": {
                "backend": "vllm",
                "model_id": str(models[0]),
                "batch_size": 4,
                "options": {"tensor_parallel_size": 4},
            }
        }
    )
    index = planted_index(tmp_path / "data", n_good=1)
    report = run_describe([index], cfg, tmp_path / "d.jsonl")
    assert report.done == 6
    generate_calls = [c for c in vllm.calls if c[0] == "generate"]
    assert [len(c[1]) for c in generate_calls] == [4, 2]  # batched
    assert vllm.calls[0][1]["tensor_parallel_size"] == 4
    frame = load_descriptions(tmp_path / "d.jsonl")
    # TP does not change the cache key; the (default) context length does
    assert frame["provenance"].iloc[0]["engine"] == {"max_model_len": 8192}


@pytest.mark.parametrize(
    ("api", "field", "cls"),
    [
        ("new", "structured_outputs", "StructuredOutputsParams"),
        ("old", "guided_decoding", "GuidedDecodingParams"),
    ],
)
def test_structured_output_shim(models, monkeypatch, api, field, cls):
    reply = json.dumps(
        {
            "anomaly": True,
            "defect_type": "scratch",
            "location": "upper left",
            "appearance": "thin dark line",
            "phrase": "dark scratch on the upper left",
        }
    )
    vllm = stand_in_vllm(api, reply=reply)
    _install(monkeypatch, vllm)
    ((key, value),) = structured_output_kwargs({"type": "object"}, vllm.sampling_params).items()
    assert (
        key == field
        and type(value).__name__ == cls
        and value.kwargs == {"json": {"type": "object"}, "disable_any_whitespace": True}
    )

    ex = VllmExtractor.from_config(ExtractConfig(backend="vllm", model_id=str(models[1])))
    assert "limit_mm_per_prompt" not in vllm.calls[0][1]
    t = load_template("extract_v1")
    req = ExtractRequest("i", "A dark scratch.", t.render(description="A dark scratch."), t.system)
    (gen,) = ex.extract([req], Sampling(0.7, 64, 3))
    _, prompts, params = vllm.calls[-1]
    assert prompts[0].startswith(f"<|im_start|>system\n{t.system}<|im_end|>")
    assert "A dark scratch." in prompts[0] and prompts[0].endswith("<|im_start|>assistant\n")
    assert params.kwargs[field].kwargs["json"] == Extraction.model_json_schema()
    assert (params.kwargs["temperature"], params.kwargs["seed"]) == (0.7, 3)
    assert Extraction.model_validate_json(gen.text).phrase == "dark scratch on the upper left"


def test_shim_fails_loudly_without_either_api(monkeypatch):
    vllm = stand_in_vllm("none")
    _install(monkeypatch, vllm)
    with pytest.raises(
        RuntimeError, match="neither StructuredOutputsParams nor GuidedDecodingParams"
    ):
        structured_output_kwargs({}, vllm.sampling_params)


def test_missing_vllm_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="make gpu-env"):
        import_vllm()


def test_options_are_checked_and_keyed():
    assert settings_for({"tensor_parallel_size": 2, "max_model_len": 4096}) == {
        "max_model_len": 4096
    }
    assert settings_for({"max_num_seqs": 32}) == {"max_model_len": 8192}
    assert settings_for({}, structured=True) == {
        "max_model_len": 8192,
        "structured_output": {"disable_any_whitespace": True},
    }
    with pytest.raises(ValueError, match="unknown options"):
        settings_for({"tensor_parallel": 2})


def _extract_key(options: dict, structured_params: dict | None = None) -> str:
    """The cache key of one description under an extractor with these options."""
    from hxpe.agent.backend_base import engine_settings
    from hxpe.agent.runner import settings_hash, stage_settings

    cfg = ExtractConfig(backend="vllm", options=options)
    template = load_template(cfg.template)
    return settings_hash(stage_settings("extract", cfg, template, engine_settings(cfg)))


def test_cache_key_holds_max_model_len_and_the_whitespace_switch(monkeypatch):
    import hxpe.agent.backend_vllm as bv

    base = _extract_key({"max_model_len": 4096})
    assert _extract_key({"max_model_len": 4096, "max_num_seqs": 64}) == base  # speed only
    assert _extract_key({"max_model_len": 8192}) != base
    monkeypatch.setattr(bv, "STRUCTURED_OPTIONS", {"disable_any_whitespace": False})
    assert _extract_key({"max_model_len": 4096}) != base


def test_extractor_settings_match_the_config_key(models, monkeypatch):
    from hxpe.agent.backend_base import engine_settings

    _install(monkeypatch, stand_in_vllm("new"))
    cfg = ExtractConfig(backend="vllm", model_id=str(models[1]), options={"max_model_len": 2048})
    assert VllmExtractor.from_config(cfg).settings() == engine_settings(cfg)
    assert engine_settings(cfg)["structured_output"] == {"disable_any_whitespace": True}
    dcfg = DescribeConfig(backend="vllm", model_id=str(models[0]))
    assert "structured_output" not in engine_settings(dcfg)
