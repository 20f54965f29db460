"""The app's logic without a browser (hxpe.app.analyse): one image reader for predict, evaluation and
the app, and a clear message for each refused input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import hxpe.predict as predict_module
from hxpe.app import NO_AGENT, analyse, available_backends, found_checkpoints
from hxpe.config import load_config
from hxpe.data.index import DatasetIndex
from hxpe.data.torch_dataset import IndexDataset
from hxpe.model.checkpoint import save_checkpoint
from hxpe.model.model import build_model
from hxpe.model.tiny import tiny_model_config
from hxpe.predict import DEFAULT_PARAMS, predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "demo" / "checkpoints" / "aux_to_target" / "hxpe"
    out.mkdir(parents=True)
    save_checkpoint(build_model(tiny_model_config("adaclip")), out, {"note": "untrained"})
    return out


class Recorder(nn.Module):
    """The real model, remembering every image batch it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.cfg, self.seen = model, model.cfg, []

    def forward(self, x, phrases, reference=None, has_reference=None, **options):  # type: ignore[no-untyped-def]
        self.seen.append(x.detach().clone())
        return self.model(x, phrases, reference, has_reference, **options)


def _awkward_image(path: Path) -> Path:
    """A 16-bit grey PNG: the kind that used to be clipped in evaluation and rescaled in predict."""
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 65536, (90, 130), dtype=np.uint16)).save(path)
    return path


def test_the_same_file_gives_the_same_tensor_in_predict_evaluation_and_the_app(
    checkpoint, tmp_path, monkeypatch
):
    image = _awkward_image(tmp_path / "depth16.png")
    recorder = Recorder(predict_module.load_model(load_config(DEFAULT_PARAMS), checkpoint)[0])
    monkeypatch.setattr(predict_module, "load_model", lambda cfg, ckpt: (recorder, str(ckpt)))
    predict(image, checkpoint=checkpoint)
    page = analyse(image, checkpoint=checkpoint, agent=NO_AGENT, out_dir=tmp_path / "out")
    assert page.status.startswith("Done"), page.status
    via_predict, via_app = recorder.seen
    frame = pd.DataFrame(
        [
            {
                "image_id": "x",
                "dataset": "d",
                "cls": "c",
                "split": "test",
                "label": 0,
                "defect_type": "good",
                "image": image.name,
                "mask": "",
                "sha256": "",
            }
        ]
    )
    size = recorder.cfg.clip.image_size
    via_evaluation = IndexDataset(DatasetIndex("d", tmp_path, frame), size, "test")[0]["image"]
    assert torch.equal(via_predict[0], via_evaluation)
    assert torch.equal(via_app[0], via_evaluation)
    # rescaled by the bit depth: the mean of uniform 16-bit noise is mid-grey, not clipped white
    assert abs(float(via_evaluation.mean()) - 0.5) < 0.02


def test_the_page_shows_the_prediction_and_its_record(checkpoint, tmp_path):
    image = _awkward_image(tmp_path / "part.png")
    text = "There is a small dark scratch in the upper left of the image. It looks like a scratch."
    page = analyse(image, checkpoint=checkpoint, description=text, out_dir=tmp_path / "out")
    direct = predict(image, checkpoint=checkpoint, description=text, words=True)
    assert page.phrase == direct.phrase and page.phrase
    assert page.verdict == "anomalous"
    assert page.score == f"{direct.image_score:.4f}"
    record = json.loads(page.record.read_text())
    assert record["phrase"] == direct.phrase
    deltas = [w["delta_score"] for w in record["word_importance"]]
    assert deltas == pytest.approx([d for _, d in direct.word_importance], abs=1e-5)
    for picture in (page.overlay, page.prompt, page.words):
        assert Image.open(picture).size[0] > 200


def test_refusals_say_what_is_wrong(checkpoint, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    page = analyse(text, checkpoint=checkpoint, out_dir=tmp_path)
    assert (
        page.status.startswith("**Not an image:**") and "notes.png is not an image" in page.status
    )
    assert page.overlay is None and page.record is None

    big = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(big)
    page = analyse(big, checkpoint=checkpoint, max_pixels=100_000, out_dir=tmp_path)
    assert page.status.startswith("**Image too large:**")
    assert "400×300 = 120,000 pixels; the limit is 100,000 pixels" in page.status

    assert analyse(None, out_dir=tmp_path).status.startswith("**No image:**")
    both = analyse(
        big, checkpoint=checkpoint, agent="classical", description="a scratch", out_dir=tmp_path
    )
    assert both.status.startswith("**Two explanations:**")


def test_a_checkpoint_that_does_not_match_its_model_config_is_named(checkpoint, tmp_path):
    image = tmp_path / "part.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(image)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "trainable.safetensors").write_bytes(
        (checkpoint / "trainable.safetensors").read_bytes()
    )
    config = json.loads((checkpoint / "config.json").read_text())
    config["model"]["adaclip"]["prompt_depth"] = 3  # weights were trained for depth 2
    (wrong / "config.json").write_text(json.dumps(config))
    page = analyse(image, checkpoint=wrong, out_dir=tmp_path)
    assert page.status.startswith("**Checkpoint not usable:**")
    assert "does not match" in page.status or "expects" in page.status

    config["model"]["clip"]["no_such_field"] = 1  # config.json from other code
    (wrong / "config.json").write_text(json.dumps(config))
    page = analyse(image, checkpoint=wrong, out_dir=tmp_path)
    assert "does not match this code's model config" in page.status

    page = analyse(image, checkpoint=tmp_path / "nowhere", out_dir=tmp_path)
    assert page.status.startswith("**Checkpoint not usable:**") and "config.json" in page.status


def test_choices_offered_by_the_page(checkpoint):
    assert found_checkpoints(checkpoint.parents[3]) == [str(checkpoint)]
    assert available_backends(load_config(DEFAULT_PARAMS))[0] == "classical"


def test_hxpe_app_binds_to_this_machine_by_default(capsys):
    from hxpe.cli import build_parser, main

    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.max_pixels) == ("127.0.0.1", 7860, 40_000_000)
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default 127.0.0.1: this machine only" in help_text
