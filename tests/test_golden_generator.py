"""The pure parts of the golden generator ``tests/golden/make_golden.py`` (no authors' code needed):
its random CLIP and its synthetic inputs."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from hxpe.equivalence import golden_dir

GENERATOR = Path(__file__).parent / "golden" / "make_golden.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_golden", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_golden"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["make_golden"]


def test_random_clip_is_fp16_exact_and_loads_strictly_into_open_clip(gen, tmp_path: Path) -> None:
    sd = gen.random_clip(0)
    assert len(sd) == 446
    assert all(v.dtype == torch.float16 and torch.isfinite(v).all() for v in sd.values())
    assert sd["visual.positional_embedding"].shape == (16 * 16 + 1, 128)
    assert float(sd["logit_scale"]) == pytest.approx(2.66015625)  # fp16(ln(1 / 0.07))
    ln = sd["visual.ln_pre.weight"].float()
    assert 0.9 < float(ln.mean()) < 1.1 and 0.05 < float(ln.std()) < 0.15  # 1 + N(0, 0.1^2)
    in_proj = sd["visual.transformer.resblocks.0.attn.in_proj_weight"].float()
    assert float(in_proj.std()) == pytest.approx(128**-0.5, rel=0.05)
    assert torch.equal(gen.random_clip(0)["visual.proj"], sd["visual.proj"])  # seeded
    assert not torch.equal(gen.random_clip(1)["visual.proj"], sd["visual.proj"])
    (tmp_path / "golden-gen-clip.json").write_text(json.dumps(gen.CLIP_SPEC))
    open_clip.add_model_config(tmp_path)
    model = open_clip.create_model("golden-gen-clip", pretrained=None)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


@pytest.mark.parametrize(("size", "batch"), [(224, 2), (322, 3)])
def test_inputs_masks_and_labels_agree(gen, size: int, batch: int) -> None:
    inputs = gen.make_inputs(0, size, batch)
    images, masks, labels = inputs["images"], inputs["masks"], inputs["labels"]
    assert images.shape == (batch, 3, size, size) and images.dtype == torch.float32
    assert torch.equal((images * 255).round() / 255, images)  # exactly uint8 / 255
    assert masks.shape == (batch, size, size) and masks.dtype == torch.uint8
    assert labels.tolist() == [1] * (batch - 1) + [0]
    assert torch.equal(labels, masks.flatten(1).any(1).long())
    defect = masks[0].bool()
    assert 0.005 < float(defect.float().mean()) < 0.1
    # the stain darkens exactly the masked pixels of image 0 (its clean twin is not stored:
    # the defect region is darker on average than the rest)
    grey = images[0].mean(0)
    assert float(grey[defect].mean()) < 0.6 * float(grey[~defect].mean())
    assert torch.equal(gen.make_inputs(0, size, batch)["images"], images)  # seeded


@pytest.mark.skipif(golden_dir() is None, reason="golden folder not found (../shared/golden)")
def test_generator_layout_matches_the_golden_folder(gen) -> None:
    from safetensors import safe_open

    golden = golden_dir()
    assert json.loads((golden / "clip.json").read_text()) == gen.CLIP_SPEC
    with safe_open(str(golden / "clip.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    assert shapes == {k: tuple(v.shape) for k, v in gen.random_clip(0).items()}
    for base, make in (
        ("anomalyclip", gen.anomalyclip_settings),
        ("adaclip", gen.adaclip_settings),
    ):
        assert json.loads((golden / base / "settings.json").read_text()) == make(0, 224)


def test_compare_reports_missing_and_equal_keys(gen, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    for name, tensors in (
        ("a", {"x": torch.ones(2), "y": torch.zeros(1)}),
        ("b", {"x": torch.ones(2)}),
    ):
        (tmp_path / name / "adaclip").mkdir(parents=True)
        save_file(tensors, str(tmp_path / name / "adaclip" / "expected.safetensors"))
    rows = gen.compare(tmp_path / "b", tmp_path / "a")
    assert rows == [
        ("adaclip/expected.safetensors", "x", 0.0),
        ("adaclip/expected.safetensors", "y", float("inf")),
    ]
    shutil.rmtree(tmp_path / "a")
