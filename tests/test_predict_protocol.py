"""One image, one score: ``hxpe predict`` on a test image, with the checkpoint's defaults and the
class's protocol reference, gives the protocol's stored score and map (|Δ| ≤ 1e-4).

The setup is the demo profile shrunk (tests/support/doctests.py, tiny_demo_config): stages 01-05 for real on
generated images, a trained checkpoint (one step) whose CLIP input (112 px) differs from the
protocol resolution (96 px), the classical describer and rule extractor, AdaCLIP's HSF score with
its scikit-learn k-means, the class name in the prompts, DINOv2 prompts against the reference.
Each of these was a cause of "one image, two scores" (see hxpe/LEDGER.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hxpe.data.index import load_index, select_references
from hxpe.evaluation.maps import MapStore
from hxpe.predict import predict

from support.doctests import tiny_demo_config

DIRECTION = "aux_to_target"
EVAL_SIZE = 96


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    from hxpe.agent import phrases_for_rule, run_describe, run_extract
    from hxpe.config import Config, deep_merge
    from hxpe.data.prepare import prepare_all
    from hxpe.evaluation.protocol import run_protocol
    from hxpe.train import train_all

    root = tmp_path_factory.mktemp("predict-protocol")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HXPE_RESULTS_ROOT", str(root))
        raw = deep_merge(
            tiny_demo_config().model_dump(mode="json"),
            {"evaluation": {"image_size": EVAL_SIZE, "map_dtype": "float32", "batch_size": 3}},
        )
        raw["variants"] = {"hxpe": {"base": "adaclip"}}
        cfg = Config.model_validate(raw)
        indexes = prepare_all(cfg)
        descriptions, extractions = cfg.layout.agent_caches(cfg.data.reference_rule)
        run_describe([indexes["demo_target"]], cfg.agent, descriptions)  # aux: trains phrase-less
        run_extract(descriptions, cfg.agent, extractions, clip=cfg.model.clip)
        train_all(cfg, phrases_for_rule(cfg.results_dir, "first_normal_train"))
        run_protocol(cfg)
        layout = cfg.layout
    assert layout.root.is_relative_to(root)
    return cfg, layout


def _case(layout, k: int):
    target = load_index(layout.index_dir("demo_target"))
    test = target.split("test")
    row = test[test["label"] == 1].iloc[k]
    reference = select_references(target, "first_normal_train")[row["cls"]]
    store = MapStore(layout.maps_dir(DIRECTION, "hxpe", "demo_target"))
    scores = store.scores().set_index("image_id")
    return (
        target.abs_path(row["image"]),
        target.abs_path(target.row(reference)["image"]),
        row["cls"],
        float(scores.loc[row["image_id"], "image_score"]),
        store.read_map(row["image_id"]),
    )


@pytest.mark.parametrize("k", [0, 1])
def test_predict_gives_the_protocols_stored_score_and_map(protocol_run, k, tmp_path):
    cfg, layout = protocol_run
    checkpoint = layout.checkpoint_dir(DIRECTION, "hxpe")
    image, reference, cls, stored_score, stored_map = _case(layout, k)
    result = predict(
        image, reference=reference, checkpoint=checkpoint, agent="classical", class_name=cls
    )
    assert cfg.model.clip.image_size != EVAL_SIZE  # the model's own size is not the protocol's
    assert result.anomaly_map.shape == stored_map.shape == (EVAL_SIZE, EVAL_SIZE)
    assert abs(result.image_score - stored_score) <= 1e-4
    assert float(np.abs(result.anomaly_map - stored_map).max()) <= 1e-4
    record = json.loads(result.save(tmp_path)["json"].read_text())
    assert record["protocol"]["matches_protocol"] is True
    assert record["protocol"]["differs"] == {}
    assert record["protocol"]["used"]["image_size"] == EVAL_SIZE


def test_an_override_is_recorded_and_moves_the_score(protocol_run, tmp_path):
    _, layout = protocol_run
    checkpoint = layout.checkpoint_dir(DIRECTION, "hxpe")
    image, reference, cls, stored_score, _ = _case(layout, 0)
    small = predict(
        image,
        reference=reference,
        checkpoint=checkpoint,
        agent="classical",
        class_name=cls,
        image_size=112,
    )
    record = json.loads(small.save(tmp_path)["json"].read_text())["protocol"]
    assert record["differs"] == {"image_size": {"protocol": EVAL_SIZE, "used": 112}}
    assert record["matches_protocol"] is False
    assert abs(small.image_score - stored_score) > 1e-4
    alone = predict(image, checkpoint=checkpoint, agent=None, class_name=cls)
    differs = alone.protocol["differs"]
    assert differs["reference"]["used"] is None
    assert "first normal training image" in differs["reference"]["protocol"]
