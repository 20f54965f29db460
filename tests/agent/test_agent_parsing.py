"""Bad model output: every kind is recognised, retried and recorded with its reason."""

from __future__ import annotations

import types

import pytest

import hxpe.agent.phrase as phrase_module
from hxpe.agent.backend_base import Generation, Sampling
from hxpe.agent.config import DescribeConfig, ExtractConfig
from hxpe.agent.parsing import OutputError, check_description, parse_extraction
from hxpe.agent.phrase import clip_tokenizer, count_clip_tokens, fit_phrase
from hxpe.agent.runner import run_with_retries
from hxpe.agent.schema import Extraction, verdict, vlm_says_no_anomaly

GOOD = '{"anomaly": true, "defect_type": "scratch", "location": "upper left", "appearance": "thin dark line", "phrase": "thin dark scratch on the upper left"}'


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        ("", "stop", "empty"),
        ("   \n", "stop", "empty"),
        ("I'm sorry, but I can't help with that.", "stop", "refusal"),
        ("The object looks fine to me.", "stop", "malformed_json"),
        ('{"anomaly": true, "phrase": "dark scr', "length", "truncated_json"),
        ('{"anomaly": true, "phrase": "dark scratch"', "stop", "truncated_json"),
        ('{"anomaly": yes, "phrase": "x"}', "stop", "malformed_json"),
        ("[1, 2, 3]", "stop", "malformed_json"),
        ('{"defect_type": "scratch"}', "stop", "schema"),
        ('{"anomaly": true, "phrase": ""}', "stop", "schema"),
        ('{"anomaly": "perhaps", "phrase": "x"}', "stop", "schema"),
        ('{"anomaly": true, "phrase": "' + "very " * 100 + '"}', "stop", "schema"),
    ],
)
def test_malformed_extractions_have_reasons(text, finish, reason):
    with pytest.raises(OutputError) as info:
        parse_extraction(Generation(text, finish))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"Sure! Here is the JSON:\n```json\n{GOOD}\n```",
        f"{GOOD}\nThe defect is clearly visible.",
        GOOD.replace("true", '"yes"').replace('"scratch",', '"scratch", "confidence": 0.9,'),
    ],
)
def test_wrapped_or_lax_json_is_accepted(text):
    rec = parse_extraction(Generation(text))
    assert rec == Extraction(
        anomaly=True,
        defect_type="scratch",
        location="upper left",
        appearance="thin dark line",
        phrase="thin dark scratch on the upper left",
    )


def test_description_checks():
    assert check_description(Generation("  No anomaly \n")) == "No anomaly"
    for gen, reason in [
        (Generation(""), "empty"),
        (Generation("As an AI, I cannot inspect images."), "refusal"),
        (Generation("A long rambling text", "length"), "overlong"),
    ]:
        with pytest.raises(OutputError) as info:
            check_description(gen)
        assert info.value.reason == reason


def test_retries_then_failure_with_reason():
    cfg = ExtractConfig(max_retries=2, temperature=0.0, retry_temperature=0.5, seed=7)
    seen: list[Sampling] = []
    scripted = {"a": [GOOD], "b": ["", "{broken", GOOD], "c": ["", "", ""]}

    def call(batch, sampling):
        seen.append(sampling)
        return [Generation(scripted[r].pop(0)) for r in batch]

    out = run_with_retries(["a", "b", "c"], call, parse_extraction, cfg)
    assert [o.ok for o in out] == [True, True, False]
    assert [o.attempts for o in out] == [1, 3, 3]
    assert out[2].error.startswith("empty")
    assert [(s.temperature, s.seed) for s in seen] == [(0.0, 7), (0.5, 8), (0.5, 9)]


def test_engine_error_isolated_to_one_item():
    cfg = DescribeConfig(max_retries=0)

    def call(batch, sampling):
        if "bad" in batch:
            raise RuntimeError("image too small")
        return [Generation(f"text {b}") for b in batch]

    out = run_with_retries(["x", "bad", "y"], call, check_description, cfg)
    assert [o.value for o in out] == ["text x", None, "text y"]
    assert out[1].error.startswith("engine_error: RuntimeError: image too small")


def test_phrase_budget_uses_clip_tokens():
    phrase = "small dark scratch on the upper left surface"
    assert count_clip_tokens(phrase) == 8
    long = " ".join(["tiny dark elongated scratch"] * 8)
    short, cut = fit_phrase(long, 20)
    assert cut and count_clip_tokens(short) == 20 and long.startswith(short)
    assert fit_phrase(phrase, 20) == (phrase, False)


def test_phrase_budget_counts_tokens_of_the_configured_clip(monkeypatch):
    from hxpe.agent import extract_one
    from hxpe.agent.config import AgentConfig
    from hxpe.model.clip_tower import ClipConfig
    from hxpe.model.tiny import TINY_MODEL

    tiny = ClipConfig.model_validate(TINY_MODEL["clip"])
    assert (
        type(clip_tokenizer(tiny)).__name__ == "SimpleTokenizer"
    )  # open_clip's, for the tiny CLIP
    per_char = types.SimpleNamespace(encode=list, decode="".join)
    real = phrase_module._tokenizer
    monkeypatch.setattr(
        phrase_module,
        "_tokenizer",
        lambda name, cfg_file: per_char if name == "hxpe-tiny-clip" else real(name, cfg_file),
    )
    assert count_clip_tokens("crack", tiny) == 5  # one "token" per character
    assert fit_phrase("cracked", 3, tiny) == ("cra", True)
    assert count_clip_tokens("crack") == 1  # the paper CLIP's BPE
    cfg = AgentConfig.model_validate(
        {"extract": {"backend": "rules", "model_id": "hxpe-rules", "max_phrase_tokens": 12}}
    )
    text = "Image 2 differs. There is a small round spot in the centre of the image. It looks like a hole."
    paper = extract_one(text, cfg)
    cut = extract_one(text, cfg, clip=tiny)
    assert paper["phrase_tokens"] <= 12 and not paper["phrase_truncated"]
    assert cut["phrase_truncated"] and cut["phrase_tokens"] == len(cut["phrase"]) <= 12


NEGATIVE_ANSWERS = [
    "No anomaly",
    "No anomaly.",
    "  no anomalies found",
    "There is no anomaly in Image 2.",
    "Image 2 looks identical to Image 1: no defects are visible.",
    "Compared with the reference, I do not see any defects on the bottle.",
    "The screw does not show any visible damage.",
    "The surface appears defect-free and uniform.",
    "There are no meaningful differences between the two images.",
    "Defects: none.",
    "The capsule is free of defects; the print is sharp.",
    "After comparing both images carefully, no anomaly.",
]
POSITIVE_REPORTS = [
    "A scratch; otherwise no anomaly.",
    "A thin scratch on the upper left; no other anomaly.",
    "There is a dent near the rim. Apart from this, no defects are visible.",
    "A crack runs across the centre, but no other damage is visible.",
    "Small hole at the bottom; the rest shows no difference from Image 1.",
    "A brown stain on the left side of the carpet. No further defects.",
    "A missing pin on the connector; no anomaly elsewhere.",
    "The cable insulation is cut, exposing the copper wire.",
    "There is a small dark spot which is not present in Image 1.",
    "The difference is not due to lighting: a deep scratch crosses the surface.",
]


@pytest.mark.parametrize("text", NEGATIVE_ANSWERS)
def test_vlm_negative_answer_is_recognised_wherever_it_is_stated(text):
    assert vlm_says_no_anomaly(text)
    assert verdict(True, text, "llm_and_vlm") is False


@pytest.mark.parametrize("text", POSITIVE_REPORTS)
def test_reported_findings_are_not_vetoed(text):
    assert not vlm_says_no_anomaly(text)
    assert verdict(True, text, "llm_and_vlm") is True


def test_anti_false_alarm_verdict():
    assert verdict(True, "A scratch.", "llm_and_vlm") is True
    assert verdict(True, "No anomaly", "llm_and_vlm") is False
    assert verdict(True, "No anomaly", "llm") is True
    assert verdict(False, "A scratch.", "llm") is False
    with pytest.raises(ValueError, match="unknown anti_false_alarm"):
        verdict(True, "x", "vote")
