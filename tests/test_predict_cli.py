"""``hxpe predict`` and :func:`hxpe.predict.predict` on a tiny random-init checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hxpe.cli import main
from hxpe.data.fixtures import write_part_pair
from hxpe.data.torch_dataset import load_image
from hxpe.hashing import file_sha256
from hxpe.model.checkpoint import load_checkpoint, save_checkpoint
from hxpe.model.model import build_model
from hxpe.model.tiny import tiny_model_config
from hxpe.predict import ImageReadError, predict, read_image

DESCRIPTION = (
    "There is a small thin line in the upper left of the image. It is darker than the "
    "surrounding surface. It looks like a scratch."
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "hxpe"
    out.mkdir()
    save_checkpoint(build_model(tiny_model_config("adaclip")), out, {"note": "untrained"})
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A normal reference and a scratched part (RGB PNG, 150×100)."""
    return write_part_pair(tmp_path_factory.mktemp("images"))


_LOADED: dict[Path, torch.nn.Module] = {}


def forward(ckpt: Path, path: Path, phrase: str | None, size: int = 112):
    """The checkpoint's own forward on the evaluation stage's image loader (loaded once)."""
    if ckpt not in _LOADED:
        _LOADED[ckpt] = load_checkpoint(ckpt).eval()
    model = _LOADED[ckpt]
    with torch.no_grad():
        return model(load_image(path, size)[None], [phrase])


def test_predict_writes_overlay_and_json_that_agree_with_the_model(checkpoint, images, tmp_path):
    result = predict(images["part"], checkpoint=checkpoint)
    paths = result.save(tmp_path)
    assert paths["overlay"].stat().st_size > 5_000
    assert Image.open(paths["overlay"]).size[0] > 200
    record = json.loads(paths["json"].read_text())
    out = forward(checkpoint, images["part"], None)
    amap = out.anomaly_map[0].numpy()
    assert record["image_score"] == pytest.approx(float(out.image_score[0]), abs=1e-5)
    assert record["map"]["max"] == pytest.approx(float(amap.max()), abs=1e-5)
    assert record["map"]["mean"] == pytest.approx(float(amap.mean()), abs=1e-5)
    assert record["map"]["area_above_0.5"] == pytest.approx(float((amap > 0.5).mean()), abs=1e-6)
    assert record["phrase"] is None and record["verdict"] is None
    shown = record["provenance"]["checkpoint"]  # no server-side absolute path in the record
    assert not Path(shown).is_absolute() and str(checkpoint).endswith("/" + shown)
    assert record["image"] == "part.png" and record["image_sha256"] == file_sha256(images["part"])
    assert "random-init" in record["provenance"]["note"]


def test_description_goes_through_the_extractor(checkpoint, images):
    result = predict(images["part"], checkpoint=checkpoint, description=DESCRIPTION)
    assert result.phrase == "small dark scratch on the upper left"
    assert result.verdict is True
    out = forward(checkpoint, images["part"], result.phrase)
    assert result.image_score == pytest.approx(float(out.image_score[0]), abs=1e-5)
    normal = predict(images["part"], checkpoint=checkpoint, description="No anomaly")
    assert normal.verdict is False and normal.phrase is None


def test_agent_describes_against_the_reference(checkpoint, images):
    result = predict(
        images["part"], reference=images["reference"], checkpoint=checkpoint, agent="classical"
    )
    assert result.description and result.description != "No anomaly"
    assert result.explained.backends["describe"].startswith("classical")
    with pytest.raises(ValueError, match="--reference"):
        predict(images["part"], checkpoint=checkpoint, agent="classical")


@pytest.mark.parametrize(
    "mode, array",
    [
        ("RGBA", np.full((40, 70, 4), 200, np.uint8)),
        ("L", np.full((40, 70), 90, np.uint8)),
        ("I;16", (np.arange(40 * 70, dtype=np.uint16).reshape(40, 70) * 20)),
        ("P", None),
        ("1", None),
    ],
)
def test_any_pillow_mode_becomes_rgb(mode, array, tmp_path):
    if array is not None:
        img = Image.fromarray(array, mode=mode) if mode != "I;16" else Image.fromarray(array)
    else:
        img = Image.new("RGB", (70, 40), (10, 120, 200)).convert(mode)
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    img.save(path)
    rgb = read_image(path)
    assert rgb.mode == "RGB" and rgb.size == (70, 40)
    if mode == "I;16":
        values = np.asarray(rgb)[..., 0]
        assert values.max() > 200 and values.min() == 0  # 16-bit range kept, not clipped to white


def test_unreadable_inputs_say_what_is_wrong(tmp_path, images):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match="not an image Pillow can read"):
        read_image(text)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(images["part"].read_bytes()[:300])
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(truncated)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_cli_predict_and_help(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["predict", str(images["part"]), "--checkpoint", str(checkpoint), "--out", str(out)])
    assert rc == 0
    assert (out / "part_overlay.png").is_file() and (out / "part_prediction.json").is_file()
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    assert main(["predict", str(bad), "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--reference", "--checkpoint", "--description", "--agent", "--params", "--out"):
        assert option in help_text
