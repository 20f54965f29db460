"""Bad model output: every kind is recognised, retried and recorded with its reason."""

from __future__ import annotations

import pytest

from hxpe.agent.backend_base import Generation, Sampling
from hxpe.agent.config import DescribeConfig, ExtractConfig
from hxpe.agent.parsing import OutputError, check_description, parse_extraction
from hxpe.agent.phrase import count_clip_tokens, fit_phrase
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


def test_anti_false_alarm_verdict():
    assert vlm_says_no_anomaly("No anomaly.") and vlm_says_no_anomaly("  no anomalies found")
    assert not vlm_says_no_anomaly("A scratch; otherwise no anomaly.")
    assert verdict(True, "A scratch.", "llm_and_vlm") is True
    assert verdict(True, "No anomaly", "llm_and_vlm") is False
    assert verdict(True, "No anomaly", "llm") is True
    assert verdict(False, "A scratch.", "llm") is False
    with pytest.raises(ValueError, match="unknown anti_false_alarm"):
        verdict(True, "x", "vote")
