"""The demo's classical differential describer and the rule extractor that reads it back."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from hxpe.agent.backend_base import DescribeRequest, ExtractRequest, Generation, Sampling
from hxpe.agent.backend_classical import NO_ANOMALY, ClassicalDescriber
from hxpe.agent.backend_rules import RuleExtractor
from hxpe.agent.parsing import parse_extraction
from hxpe.data.fixtures import plant_scratch, plant_spot, texture_crop


@pytest.fixture(scope="module")
def describer() -> ClassicalDescriber:
    return ClassicalDescriber()


def test_clean_images_give_no_anomaly(describer):
    ref = texture_crop(0, 0)
    assert describer.describe_pair(ref, ref, "wall") == NO_ANOMALY
    assert describer.describe_pair(ref, texture_crop(2, 3), "wall") == NO_ANOMALY  # shifted


def test_without_a_reference_a_planted_spot_is_found_and_a_clean_image_is_not(describer):
    """Against a median-filtered copy of itself (a weaker stand-in than a real reference: on the
    busy brick crop at (0, 0) it finds nothing, on this smoother crop it finds the spot)."""
    clean = texture_crop(42, 203)
    assert describer.describe_single(clean, "tile") == NO_ANOMALY
    text = describer.describe_single(plant_spot(texture_crop(40, 200), (90, 90, 104, 104)), "tile")
    assert text.startswith("The tile shows local irregularities.") and "lower right" in text
    req = DescribeRequest("x", "tile", "prompt", clean, None)
    assert describer.describe([req], Sampling(0.0, 64, 0))[0].text == NO_ANOMALY


def test_lighting_change_is_ignored(describer):
    ref = texture_crop(0, 0)
    brighter = Image.fromarray(np.clip(np.asarray(ref, np.int16) + 20, 0, 255).astype(np.uint8))
    assert describer.describe_pair(ref, brighter, "wall") == NO_ANOMALY


def test_planted_scratch_is_found_where_it_is(describer):
    ref = texture_crop(0, 0)
    test = plant_scratch(texture_crop(2, 3), (10, 15, 45, 30))
    (region,) = describer.analyse(ref, test)
    assert region.location == "upper left"
    assert region.shape == "thin line" and region.tone == "darker"
    assert region.orientation in {"horizontal", "diagonal"}
    assert 0.5 < region.area_pct < 4
    text = describer.describe_pair(ref, test, "wall")
    assert "upper left" in text and "thin line" in text and "darker" in text


def test_planted_spot_colour_and_place(describer):
    ref = texture_crop(0, 0)
    test = plant_spot(ref, (90, 20, 110, 40))  # x 90-110, y 20-40: upper right
    (region,) = describer.analyse(ref, test)
    assert region.location == "upper right"
    assert region.shape == "round spot" and region.colour == "red"
    assert region.defect_type == "contamination"


def test_batch_interface(describer):
    ref = texture_crop(0, 0)
    req = DescribeRequest("d/c/test/good/0", "wall", "prompt", ref, ref)
    assert [g.text for g in describer.describe([req, req], Sampling(0, 16, 0))] == [NO_ANOMALY] * 2


def test_fast_enough_for_the_demo(describer):
    ref = texture_crop(0, 0)
    tests = [plant_scratch(texture_crop(i % 5, i % 7), (10, 15, 45, 30)) for i in range(20)]
    start = time.perf_counter()
    for t in tests:
        describer.describe_pair(ref, t, "wall")
    assert (time.perf_counter() - start) / len(tests) < 0.1  # ~100 images in a few seconds


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ValueError, match="known keys"):
        ClassicalDescriber(treshold=3)


def _extract(text: str) -> dict:
    (gen,) = RuleExtractor().extract([ExtractRequest("i", text, "p", None)], Sampling(0, 16, 0))
    return parse_extraction(gen).model_dump()


def test_rules_round_trip_the_describer(describer):
    ref = texture_crop(0, 0)
    scratch = describer.describe_pair(ref, plant_scratch(ref, (10, 15, 45, 30)), "wall")
    rec = _extract(scratch)
    assert rec["anomaly"] is True
    assert rec["location"] == "upper left"
    assert rec["defect_type"] in {"scratch", "crack"}
    assert rec["phrase"].endswith(f"{rec['defect_type']} on the upper left")
    spot = _extract(describer.describe_pair(ref, plant_spot(ref, (90, 90, 104, 104)), "wall"))
    assert (spot["defect_type"], spot["location"]) == ("contamination", "lower right")
    assert "red" in spot["phrase"]
    assert _extract(NO_ANOMALY)["anomaly"] is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No anomaly", (False, "", "")),
        ("There are no visible defects in Image 2.", (False, "", "")),
        ("Image 2 shows a deep crack near the top-left corner.", (True, "crack", "upper left")),
        ("A hole at the bottom right, round and dark.", (True, "hole", "lower right")),
        ("Something looks a bit different.", (False, "", "")),
    ],
)
def test_rules_on_free_text(text, expected):
    rec = _extract(text)
    assert (rec["anomaly"], rec["defect_type"], rec["location"]) == expected


def test_rule_output_is_schema_valid_json():
    gen = Generation(
        RuleExtractor()
        .extract([ExtractRequest("i", "a scratch", "p", None)], Sampling(0, 1, 0))[0]
        .text
    )
    assert parse_extraction(gen).phrase == "scratch"
