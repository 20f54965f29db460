"""The vLLM backend against a stand-in ``vllm`` module: request building, the engine-level
structured-output settings, the cache key, engine failures, and the contract with the pinned vLLM.

The stand-in records what the backend sends and refuses any keyword the pinned vLLM does not have
(hxpe/environment/vllm_api.json, read from the pinned wheel); vLLM itself is CUDA-only and not
installed here.
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
from hxpe.agent.tiny_models import save_tiny_qwen2, save_tiny_qwen2_vl
from hxpe.data.fixtures import planted_index, texture_crop

from support.vllm_double import stand_in_vllm


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return save_tiny_qwen2_vl(root / "vl"), save_tiny_qwen2(root / "lm")


def _install(monkeypatch, vllm):
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", vllm.sampling_params)


def test_describe_requests(models, monkeypatch):
    vllm = stand_in_vllm()
    _install(monkeypatch, vllm)
    cfg = DescribeConfig(
        backend="vllm", model_id=str(models[0]), seed=5, options={"gpu_memory_utilization": 0.85}
    )
    describer = VllmDescriber.from_config(cfg)
    ((_, engine),) = vllm.calls
    assert engine["model"] == str(models[0]) and engine["seed"] == 5
    assert engine["limit_mm_per_prompt"] == {"image": 2, "video": 0}
    assert engine["tensor_parallel_size"] == 1 and engine["max_model_len"] == 8192
    # the pixel limits in the processors' `size` form (min_pixels/max_pixels leave transformers 5.23)
    size = {"shortest_edge": 200704, "longest_edge": 1003520}
    assert engine["mm_processor_kwargs"] == {"size": size}
    assert describer.processor.image_processor.size["longest_edge"] == 1003520
    assert engine["gpu_memory_utilization"] == 0.85
    assert "structured_outputs_config" not in engine

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
    vllm = stand_in_vllm("A dark scratch in the upper left.")
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
    # TP does not change the cache key; the (default) context length and pixel limits do
    assert frame["provenance"].iloc[0]["engine"] == {
        "max_model_len": 8192,
        "mm_processor_kwargs": {"min_pixels": 200704, "max_pixels": 1003520},
    }


def test_extractor_sets_structured_outputs_on_the_engine(models, monkeypatch):
    reply = json.dumps(
        {
            "anomaly": True,
            "defect_type": "scratch",
            "location": "upper left",
            "appearance": "thin dark line",
            "phrase": "dark scratch on the upper left",
        },
        separators=(",", ":"),
    )
    vllm = stand_in_vllm(reply)
    _install(monkeypatch, vllm)
    ex = VllmExtractor.from_config(ExtractConfig(backend="vllm", model_id=str(models[1])))
    ((_, engine),) = vllm.calls
    assert "limit_mm_per_prompt" not in engine and "mm_processor_kwargs" not in engine
    # vLLM's backends read disable_any_whitespace only here, and only with an explicit backend
    assert engine["structured_outputs_config"] == {
        "backend": "guidance",
        "disable_any_whitespace": True,
    }
    t = load_template("extract_v1")
    req = ExtractRequest("i", "A dark scratch.", t.render(description="A dark scratch."), t.system)
    (gen,) = ex.extract([req], Sampling(0.7, 64, 3))
    _, prompts, params = vllm.calls[-1]
    assert prompts[0].startswith(f"<|im_start|>system\n{t.system}<|im_end|>")
    assert "A dark scratch." in prompts[0] and prompts[0].endswith("<|im_start|>assistant\n")
    structured = params.kwargs["structured_outputs"]
    assert type(structured).__name__ == "StructuredOutputsParams"
    assert structured.kwargs == {
        "json": Extraction.model_json_schema()
    }  # nothing ignored per request
    assert (params.kwargs["temperature"], params.kwargs["seed"]) == (0.7, 3)
    assert Extraction.model_validate_json(gen.text).phrase == "dark scratch on the upper left"


def test_xgrammar_can_be_chosen_and_auto_is_refused(models, monkeypatch):
    vllm = stand_in_vllm()
    _install(monkeypatch, vllm)
    options = {"structured_outputs_config": {"backend": "xgrammar"}}
    VllmExtractor.from_config(
        ExtractConfig(backend="vllm", model_id=str(models[1]), options=options)
    )
    assert vllm.calls[0][1]["structured_outputs_config"]["backend"] == "xgrammar"
    with pytest.raises(ValueError, match=r"backend 'auto'; use one of \['guidance', 'xgrammar'\]"):
        settings_for({"structured_outputs_config": {"backend": "auto"}}, structured=True)
    with pytest.raises(ValueError, match=r"structured_outputs_config \['whitespace'\]"):
        settings_for({"structured_outputs_config": {"whitespace": False}}, structured=True)
    with pytest.raises(ValueError, match="structured_outputs_config is an agent.extract option"):
        settings_for({"structured_outputs_config": {}})
    with pytest.raises(ValueError, match="mm_processor_kwargs is an agent.describe option"):
        settings_for({"mm_processor_kwargs": {}}, structured=True)


def test_shim_fails_loudly_without_structured_outputs(monkeypatch):
    vllm = stand_in_vllm(structured=False)
    _install(monkeypatch, vllm)
    with pytest.raises(
        RuntimeError, match="has no StructuredOutputsParams in vllm.sampling_params"
    ):
        structured_output_kwargs({}, vllm.sampling_params)


def test_missing_vllm_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="make gpu-env"):
        import_vllm()


def test_options_are_checked_and_keyed():
    pixels = {"min_pixels": 200704, "max_pixels": 1003520}
    assert settings_for({"tensor_parallel_size": 2, "max_model_len": 4096}) == {
        "max_model_len": 4096,
        "mm_processor_kwargs": pixels,
    }
    assert settings_for({"max_num_seqs": 32, "mm_processor_kwargs": {"max_pixels": 5}}) == {
        "max_model_len": 8192,
        "mm_processor_kwargs": {"min_pixels": 200704, "max_pixels": 5},  # one limit alone
    }
    assert settings_for({}, structured=True) == {
        "max_model_len": 8192,
        "structured_output": {"backend": "guidance", "disable_any_whitespace": True},
    }
    with pytest.raises(ValueError, match="unknown options"):
        settings_for({"tensor_parallel": 2})
    with pytest.raises(ValueError, match=r"mm_processor_kwargs \['fps'\] are not supported"):
        settings_for({"mm_processor_kwargs": {"fps": 2}})


def _key(stage: str, options: dict) -> str:
    """The settings hash of a vLLM stage with these options."""
    from hxpe.agent.backend_base import engine_settings
    from hxpe.agent.runner import settings_hash, stage_settings

    cfg = (ExtractConfig if stage == "extract" else DescribeConfig)(backend="vllm", options=options)
    template = load_template(cfg.template)
    return settings_hash(stage_settings(stage, cfg, template, engine_settings(cfg)))


def test_cache_key_holds_every_output_setting(monkeypatch):
    import hxpe.agent.backend_vllm as bv

    base = _key("extract", {"max_model_len": 4096})
    assert _key("extract", {"max_model_len": 4096, "max_num_seqs": 64}) == base  # speed only
    assert _key("extract", {"max_model_len": 8192}) != base
    xgrammar = {"max_model_len": 4096, "structured_outputs_config": {"backend": "xgrammar"}}
    assert _key("extract", xgrammar) != base
    spaced = {"structured_outputs_config": {"disable_any_whitespace": False}}
    assert _key("extract", {"max_model_len": 4096, **spaced}) != base
    monkeypatch.setattr(
        bv, "STRUCTURED_DEFAULTS", {**bv.STRUCTURED_DEFAULTS, "backend": "xgrammar"}
    )
    assert _key("extract", {"max_model_len": 4096}) == _key("extract", xgrammar)
    monkeypatch.undo()

    described = _key("describe", {})
    assert _key("describe", {"gpu_memory_utilization": 0.5, "enforce_eager": True}) == described
    assert _key("describe", {"mm_processor_kwargs": {"max_pixels": 512 * 28 * 28}}) != described
    assert _key("describe", {"mm_processor_kwargs": dict(bv.DEFAULT_PIXELS)}) == described
    monkeypatch.setattr(bv, "DEFAULT_PIXELS", {"min_pixels": 1, "max_pixels": 2})
    assert _key("describe", {}) != described  # a changed default is a changed key


def test_extractor_settings_match_the_config_key(models, monkeypatch):
    from hxpe.agent.backend_base import engine_settings

    _install(monkeypatch, stand_in_vllm())
    cfg = ExtractConfig(backend="vllm", model_id=str(models[1]), options={"max_model_len": 2048})
    assert VllmExtractor.from_config(cfg).settings() == engine_settings(cfg)
    assert engine_settings(cfg)["structured_output"] == {
        "backend": "guidance",
        "disable_any_whitespace": True,
    }
    dcfg = DescribeConfig(backend="vllm", model_id=str(models[0]))
    assert "structured_output" not in engine_settings(dcfg)
    assert VllmDescriber.from_config(dcfg).settings() == engine_settings(dcfg)


def _describe_cfg(models, batch_size: int = 4) -> AgentConfig:
    return AgentConfig.model_validate(
        {"describe": {"backend": "vllm", "model_id": str(models[0]), "batch_size": batch_size}}
    )


def test_an_engine_that_dies_mid_batch_caches_no_failure(models, monkeypatch, tmp_path):
    from hxpe.agent.runner import EngineFailure

    index = planted_index(tmp_path / "data", n_good=1)  # 6 test images: batches of 4 and 2
    path = tmp_path / "d.jsonl"
    # answers 5 prompts: the second batch (prompts 5 and 6) kills it, the retries find it dead
    vllm = stand_in_vllm("A dark scratch.", die_after=5)
    _install(monkeypatch, vllm)
    with pytest.raises(EngineFailure) as failure:
        run_describe([index], _describe_cfg(models), path)
    message = str(failure.value)
    assert "agent describe: the vllm engine failed on all 2 request(s) of a batch" in message
    assert (
        "RuntimeError: CUDA out of memory" in message and "no engine failure was cached" in message
    )
    assert "4 new record(s) of earlier batches" in message
    assert "rerun the same command: it resumes" in message
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and not any("engine_error" in line for line in lines)
    assert [len(c[1]) for c in vllm.calls if c[0] == "generate"] == [4, 2, 1, 1]

    # the rerun with a working engine does the items left
    _install(monkeypatch, stand_in_vllm("A dark scratch."))
    report = run_describe([index], _describe_cfg(models), path)
    assert (report.done, report.cached, report.failed) == (2, 4, 0)


def test_one_input_that_raises_fails_alone_and_is_retried_next_run(models, tmp_path):
    from hxpe.agent.backend_base import Generation, engine_settings

    index = planted_index(tmp_path / "data", n_good=1)
    bad = index.split("test")["image_id"].iloc[1]
    cfg = _describe_cfg(models)

    class OneBadInput:
        def settings(self):
            return engine_settings(cfg.describe)

        def describe(self, requests, sampling):
            if any(r.image_id == bad for r in requests):
                raise ValueError("prompt too long")
            return [Generation("A dark scratch.", "stop") for _ in requests]

    path = tmp_path / "d.jsonl"
    report = run_describe([index], cfg, path, describer=OneBadInput())
    assert (report.done, report.failures) == (5, {"engine_error": 1})
    assert bad not in path.read_text()  # not cached: the next run tries it again
    bad = "none"
    report = run_describe([index], cfg, path, describer=OneBadInput())
    assert (report.done, report.cached, report.failed) == (1, 5, 0)


def test_a_dead_engine_is_not_called_for_every_item(models, monkeypatch, tmp_path):
    from hxpe.agent.runner import DEAD_AFTER, FIRST_CALL, EngineFailure

    index = planted_index(tmp_path / "data", n_good=3)  # 10 test images, first call of FIRST_CALL
    vllm = stand_in_vllm(die_after=0)
    _install(monkeypatch, vllm)
    with pytest.raises(EngineFailure, match=f"failed on all {FIRST_CALL} request"):
        run_describe([index], _describe_cfg(models, batch_size=16), tmp_path / "d.jsonl")
    sizes = [len(c[1]) for c in vllm.calls if c[0] == "generate"]
    assert sizes == [FIRST_CALL] + [1] * DEAD_AFTER  # the call, then DEAD_AFTER items one by one
    assert not (tmp_path / "d.jsonl").exists() or not (tmp_path / "d.jsonl").read_text()


def test_engine_error_records_of_older_runs_are_retried(models, monkeypatch, tmp_path):
    index = planted_index(tmp_path / "data", n_good=1)
    path = tmp_path / "d.jsonl"
    _install(monkeypatch, stand_in_vllm("A dark scratch."))
    assert run_describe([index], _describe_cfg(models), path).done == 6
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[2].update(status="failed", error="engine_error: RuntimeError: CUDA out of memory")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = run_describe([index], _describe_cfg(models), path)
    assert (report.done, report.cached) == (1, 5)
    frame = load_descriptions(path)
    assert (frame["status"] == "ok").all() and len(frame) == 6


def test_the_cli_builds_one_engine_for_every_reference_rule(models, monkeypatch, tmp_path):
    import yaml

    from hxpe.cli import main
    from hxpe.data.index import save_index

    index = planted_index(tmp_path / "data", n_good=1)
    monkeypatch.setenv("HXPE_RESULTS_ROOT", str(tmp_path / "results"))
    params = {
        "profile": "two-rules",
        "variants": {"hxpe": {}, "hxpe_noref": {"reference_rule": "none"}},
        "data": {"datasets": [{"name": "planted", "kind": "mvtec", "root": str(index.root)}]},
        "agent": {
            "describe": {"backend": "vllm", "model_id": str(models[0]), "max_retries": 0},
            "extract": {"backend": "vllm", "model_id": str(models[1]), "max_retries": 0},
        },
    }
    path = tmp_path / "two-rules.yaml"
    path.write_text(yaml.safe_dump(params))
    from hxpe.config import load_config

    cfg = load_config(path)
    assert cfg.reference_rules() == ["first_normal_train", "none"]
    save_index(index, cfg.layout.index_dir("planted"))
    for stage in ("describe", "extract"):
        vllm = stand_in_vllm('{"anomaly":false}')
        _install(monkeypatch, vllm)
        assert main([stage, "--params", str(path)]) == 0
        assert [c[0] for c in vllm.calls].count("init") == 1, stage
        assert len([c for c in vllm.calls if c[0] == "generate"]) == 2  # one batch per rule
    for rule in cfg.reference_rules():
        descriptions, extractions = cfg.layout.agent_caches(rule)
        assert len(descriptions.read_text().splitlines()) == 6
        assert len(extractions.read_text().splitlines()) == 6
    vllm = stand_in_vllm()
    _install(monkeypatch, vllm)
    assert main(["describe", "--params", str(path)]) == 0
    assert vllm.calls == []  # everything cached: no engine is started at all


def test_the_cli_stops_with_the_message_when_the_engine_dies(models, monkeypatch, tmp_path, capsys):
    import yaml

    from hxpe.cli import main
    from hxpe.config import load_config
    from hxpe.data.index import save_index

    index = planted_index(tmp_path / "data", n_good=1)
    monkeypatch.setenv("HXPE_RESULTS_ROOT", str(tmp_path / "results"))
    params = {
        "profile": "dies",
        "data": {"datasets": [{"name": "planted", "kind": "mvtec", "root": str(index.root)}]},
        "agent": {"describe": {"backend": "vllm", "model_id": str(models[0]), "batch_size": 4}},
    }
    path = tmp_path / "dies.yaml"
    path.write_text(yaml.safe_dump(params))
    save_index(index, load_config(path).layout.index_dir("planted"))
    _install(monkeypatch, stand_in_vllm(die_after=4))
    assert main(["describe", "--params", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hxpe describe (first_normal_train): agent describe: the vllm engine ")
    assert "4 new record(s) of earlier batches" in err and "rerun the same command" in err
