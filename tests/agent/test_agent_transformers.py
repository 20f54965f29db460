"""The transformers backend end to end on tiny random Qwen2-VL and Qwen2 models (offline)."""

from __future__ import annotations

import pytest

from hxpe.agent import load_descriptions, load_extractions, run_describe, run_extract
from hxpe.agent.backend_base import DescribeRequest, ExtractRequest, Sampling
from hxpe.agent.backend_hf import HFDescriber, HFExtractor
from hxpe.agent.cache import read_records
from hxpe.agent.config import AgentConfig
from hxpe.agent.templates import load_template
from hxpe.agent.tiny_models import save_tiny_qwen2, save_tiny_qwen2_vl
from hxpe.data.fixtures import planted_index


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return save_tiny_qwen2_vl(root / "vl"), save_tiny_qwen2(root / "lm")


@pytest.fixture(scope="module")
def cfg(models) -> AgentConfig:
    vl, lm = models
    return AgentConfig.model_validate(
        {
            "describe": {
                "backend": "transformers",
                "model_id": str(vl),
                "max_new_tokens": 6,
                "options": {"dtype": "float32", "device": "cpu"},
                "max_retries": 1,
            },
            "extract": {
                "backend": "transformers",
                "model_id": str(lm),
                "max_new_tokens": 6,
                "options": {"dtype": "float32", "device": "cpu"},
                "max_retries": 1,
            },
        }
    )


def test_two_images_through_the_real_processor(cfg):
    describer = HFDescriber.from_config(cfg.describe)
    index = planted_index(cfg.describe.model_id + "_data", n_good=1)
    ref, test = (index.abs_path(index.split(s)["image"].iloc[0]) for s in ("train", "test"))
    from PIL import Image

    prompt = load_template("describe_v1").render(class_name="tile")
    req = DescribeRequest(
        "i", "tile", prompt, Image.open(test).convert("RGB"), Image.open(ref).convert("RGB")
    )
    inputs = describer.inputs(req)
    assert inputs["image_grid_thw"].shape[0] == 2
    text = describer.processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<|vision_start|>") == 2 and "<|im_start|>assistant" in text
    assert "Image 1 is a normal (defect-free) tile." in text
    g1, g2 = (describer.describe([req], Sampling(0.0, 6, 0))[0] for _ in range(2))
    assert g1 == g2  # greedy decoding is deterministic
    noref = DescribeRequest("i", "tile", prompt, req.image, None)
    assert describer.inputs(noref)["image_grid_thw"].shape[0] == 1


def test_describe_end_to_end(cfg, tmp_path):
    index = planted_index(tmp_path / "data", n_good=1)
    desc = tmp_path / "d.jsonl"
    report = run_describe([index], cfg, desc)
    assert report.total == 6 and report.done + report.failed == 6
    frame = load_descriptions(desc)
    assert len(frame) == 6 and set(frame["status"]) <= {"ok", "failed"}
    # a random model rarely stops within 6 tokens: such output is retried, then recorded as failed
    failed = frame[frame["status"] == "failed"]
    assert set(failed["error"].str.split(":").str[0]) <= {"overlong", "empty", "refusal"}
    assert all(failed["attempts"] == 2)
    assert sum(report.failures.values()) == report.failed
    engine = frame["provenance"].iloc[0]["engine"]
    assert engine == {"dtype": "float32", "min_pixels": None, "max_pixels": None}
    assert run_describe([index], cfg, desc).cached == 6  # resumed: no model call needed


def test_extract_end_to_end(cfg, tmp_path):
    index = planted_index(tmp_path / "data", n_good=1)
    desc, ext = tmp_path / "d.jsonl", tmp_path / "e.jsonl"
    classical = cfg.model_copy(
        update={"describe": cfg.describe.model_copy(update={"backend": "classical", "options": {}})}
    )
    run_describe([index], classical, desc)
    rep = run_extract(desc, cfg, ext)
    table = load_extractions(ext)
    assert rep.total == 6 and len(table) == 6 and rep.failed + rep.done == 6
    # a random-weight LLM does not write valid JSON: each record fails with a reason, none stops
    failed = table[table["status"] == "failed"]
    assert all(failed["attempts"] == 2)
    assert set(failed["error"].str.split(":").str[0]) <= {
        "empty",
        "malformed_json",
        "truncated_json",
        "schema",
        "refusal",
    }
    assert sum(rep.failures.values()) == rep.failed
    assert len(read_records(ext)) == 6


def test_extractor_chat_prompt(cfg):
    ex = HFExtractor.from_config(cfg.extract)
    t = load_template("extract_v1")
    req = ExtractRequest("i", "No anomaly", t.render(description="No anomaly"), t.system)
    (gen,) = ex.extract([req], Sampling(0.0, 4, 0))
    assert gen.finish_reason in {"stop", "length"}
    (gen2,) = ex.extract([req], Sampling(0.7, 4, 1))  # a sampled retry runs too
    assert isinstance(gen2.text, str)


def test_unknown_option_is_an_error(cfg):
    bad = cfg.describe.model_copy(update={"options": {"max_pixel": 10}})
    with pytest.raises(ValueError, match="unknown options"):
        HFDescriber.from_config(bad)
