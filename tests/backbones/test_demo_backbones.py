"""The demo backbones: pretraining scenes and captions, the two training losses, the build command
(reproducible from its seed), the committed weights and how the demo profile loads them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hxpe.backbones import DEMO_BACKBONES_LABEL
from hxpe.backbones.build import (
    CLIP_FILE,
    DEFAULT_OUT,
    BackboneRecipe,
    build,
    compare,
    new_clip,
    new_dinov2,
)
from hxpe.backbones.clip_pretrain import (
    ClipRecipe,
    balanced_mean,
    dense_loss,
    encode_text,
    ensemble_loss,
    ensemble_sentences,
    prompt_vocabulary,
    region_tokens,
    soft_infonce,
    state_loss,
    train_clip,
)
from hxpe.backbones.data import PretrainSet, patch_coverage
from hxpe.backbones.dino_distill import DinoRecipe
from hxpe.backbones.scenes import location_word, pretraining_sample
from hxpe.config import load_config
from hxpe.data.config import DemoDataConfig
from hxpe.data.demo import generate_demo_dataset
from hxpe.doctor import required_weight_keys
from hxpe.hashing import file_sha256
from hxpe.model.loading import MissingWeightsError, load_clip, load_dinov2
from hxpe.paths import repo_root

DEMO = repo_root() / "notebooks" / "params" / "demo.yaml"


def test_captions_name_object_colour_state_defect_size_and_location():
    s = pretraining_sample(0, 4, size=64)
    assert (s.cls, s.defect) == ("gravel", "stain")
    assert s.caption == (
        "a cropped photo of a damaged yellow gravel with a small stain at the middle left."
    )
    assert s.mask.any() and s.image.dtype == np.float32
    normal = pretraining_sample(0, 5, size=64)
    assert normal.defect is None and not normal.mask.any()
    assert normal.caption == "a close-up photo of the unblemished light grey pill."
    mask = np.zeros((9, 9), bool)
    mask[0:2, 7:9] = True
    assert location_word(mask) == "upper right"


def test_hard_negative_captions_say_the_other_state_and_leave_the_scene_alone():
    damaged, normal = pretraining_sample(0, 0, size=64), pretraining_sample(0, 1, size=64)
    assert damaged.defect == "deformation" and normal.defect is None
    assert damaged.negative == "a photo of a flawless grey bracket."
    assert normal.negative == "a photo of a flawed red brick with a large hole at the lower left."
    # drawn from their own stream: the scene and its caption are those of generator v2
    assert normal.caption == "a cropped photo of a perfect red brick."


def test_pretraining_scenes_are_not_demo_images():
    cfg = DemoDataConfig(image_size=64, n_train_good=1, n_test_good=1, n_test_per_defect=1)
    demo = []
    for part in ("aux", "target"):
        root = generate_demo_dataset(
            Path(pytest.importorskip("tempfile").mkdtemp()) / part, part, cfg
        )
        demo += [
            np.asarray(__import__("PIL.Image").Image.open(p)) for p in root.rglob("test/*/*.png")
        ]
    for i in range(14):
        img = np.round(pretraining_sample(cfg.seed, i, size=64).image * 255).astype(np.uint8)
        assert all(np.abs(img.astype(int) - d.astype(int)).mean() > 2 for d in demo)


@pytest.fixture(scope="module")
def clip0():
    """The demo CLIP at random init (seed 0) and its tokenizer; built once (seconds)."""
    return new_clip(0)


def test_truncated_text_encoder_equals_open_clip(clip0):
    clip, tokenizer = clip0
    tokens = region_tokens(tokenizer)
    assert tokens.shape == (49, 77)
    torch.testing.assert_close(
        encode_text(clip, tokens), clip.encode_text(tokens), atol=1e-5, rtol=0
    )


def test_soft_infonce_hand_value():
    eye = torch.eye(2)
    loss = soft_infonce(eye, eye, torch.eye(2, dtype=torch.bool), torch.tensor(1.0))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # two positives per row: the target is 1/2 on each, the loss log 2 at equal logits
    same = torch.ones(2, 2, dtype=torch.bool)
    loss = soft_infonce(eye, eye, same, torch.tensor(0.0))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_soft_infonce_hard_negatives_join_the_image_to_text_softmax_only():
    eye = torch.eye(2)
    negative = eye[:1]  # as close to image 0 as its own caption
    got = soft_infonce(eye, eye, torch.eye(2, dtype=torch.bool), torch.tensor(1.0), negative)
    row0 = -(1 - math.log(2 * math.e + 1))  # logits (1, 0 | 1)
    row1 = -(1 - math.log(math.e + 2))  # logits (0, 1 | 0)
    text_to_image = math.log(1 + math.exp(-1))
    assert got.item() == pytest.approx(0.5 * ((row0 + row1) / 2 + text_to_image), abs=1e-6)


def test_state_loss_classifies_the_image_among_its_class_regions():
    texts = torch.eye(3)[None].repeat(2, 1, 1)  # two classes, regions (normal, defect 1, defect 2)
    texts[1] = texts[1].flip(0)  # class 1 lists them the other way round
    image = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    got = state_loss(image, texts, torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor(1.0))
    # image 0: class 0, defect 1 = its own axis (logit 1); image 1: class 1's normal text is axis 2
    assert got.item() == pytest.approx(math.log(math.e + 2) - 1, abs=1e-6)


def test_clip_training_with_hard_negatives_and_the_state_loss_logs_each_loss(clip0):
    clip, tokenizer = clip0  # trained in place: runs after the test that reads the random init
    data = PretrainSet.generate(seed=3, n=4, size=64)
    recipe = ClipRecipe(steps=1, batch_size=4, warmup=1, hard_negatives=True, state_weight=0.5)
    rows = train_clip(clip, tokenizer, data, recipe, seed=3).rows
    assert [sorted(r) for r in rows] == [
        ["caption", "patch_region", "prompt_wording", "state", "step", "total"]
    ]
    assert rows[0]["step"] == 1  # the curve counts steps from 1, as the log does
    for r in rows:  # rounded to 5 decimals each
        want = r["caption"] + r["patch_region"] + r["prompt_wording"] + 0.5 * r["state"]
        assert r["total"] == pytest.approx(want, abs=3e-5)


def test_dense_loss_targets_the_defect_text_by_coverage():
    # one class, regions (normal, defect 1, defect 2) along the axes; 2 patches
    texts = torch.eye(3)[None]
    patches = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    cov = torch.tensor([[0.0, 0.75]])
    got = dense_loss(patches, texts, torch.tensor([0]), torch.tensor([1]), cov, torch.tensor(1.0))
    lse = math.log(math.e + 2)
    p0 = -(1 - lse)  # patch 0: all on normal, its logit 1
    p1 = -(0.25 * (0 - lse) + 0.75 * (1 - lse))  # patch 1: 1/4 normal, 3/4 defect 1
    assert got.item() == pytest.approx(p1 + p0, abs=1e-6)  # mean of touched + of the rest
    # a normal image: every patch's target is the normal text whatever its coverage
    got = dense_loss(patches, texts, torch.tensor([0]), torch.tensor([0]), cov, torch.tensor(1.0))
    assert got.item() == pytest.approx((-(1 - lse) - (0 - lse)) / 2, abs=1e-6)


def test_dense_loss_normalises_each_patch_token_over_its_channels():
    texts = torch.eye(3)[None]
    cov = torch.tensor([[0.0, 0.0]])
    unit = torch.tensor([[[1.0, 0, 0], [0.6, 0.8, 0]]])
    args = (texts, torch.tensor([0]), torch.tensor([0]), cov, torch.tensor(3.0))
    # scaling a token leaves the loss alone; rescaling across patches would change it
    scaled = unit * torch.tensor([[[5.0], [0.5]]])
    assert dense_loss(scaled, *args).item() == pytest.approx(dense_loss(unit, *args).item())
    lse0, lse1 = math.log(math.exp(3) + 2), math.log(math.exp(1.8) + math.exp(2.4) + 1)
    want = ((lse0 - 3) + (lse1 - 1.8)) / 2  # both patches untouched: their target is normal
    assert dense_loss(unit, *args).item() == pytest.approx(want, abs=1e-6)


def test_dense_loss_puts_each_images_phrase_in_its_defect_slot():
    texts = torch.eye(4)[None, :3]  # normal, defect 1, defect 2
    phrase = torch.eye(4)[3:]  # the image's phrase sentence, orthogonal to the three
    patches = torch.tensor([[[0, 0, 0, 1.0], [1.0, 0, 0, 0]]])
    cov = torch.tensor([[1.0, 0.0]])
    args = (texts, torch.tensor([0]), torch.tensor([2]), cov, torch.tensor(1.0))
    lse = math.log(math.e + 2)
    # patch 0 (the defect) matches the phrase that now stands in slot 2; patch 1 the normal text
    got = dense_loss(patches, *args, phrase_text=phrase)
    assert got.item() == pytest.approx(2 * (lse - 1), abs=1e-6)
    # on a normal image the phrase is a decoy in slot 1: every patch's target stays normal
    normal = (texts, torch.tensor([0]), torch.tensor([0]), cov, torch.tensor(1.0))
    got = dense_loss(patches, *normal, phrase_text=phrase)
    assert got.item() == pytest.approx(((lse - 0) + (lse - 1)) / 2, abs=1e-6)


def test_prompt_wording_comes_from_the_methods_prompt_file():
    templates, normal, abnormal = prompt_vocabulary()
    # every template set of prompts.yaml, once each, in file order: AdaCLIP's four, then WinCLIP's
    assert templates[:5] == (
        "a bad photo of a {}.",
        "a low resolution photo of the {}.",
        "a bad photo of the {}.",
        "a cropped photo of the {}.",
        "a cropped photo of a {}.",
    )
    assert len(templates) == len(set(templates)) == 4 + 22 - 1
    assert normal[:2] == ("{obj}", "flawless {obj}") and abnormal[-1] == "{obj} with damage"


def test_ensemble_sentences_give_each_class_a_normal_then_an_abnormal_sentence():
    a = ensemble_sentences(torch.Generator().manual_seed(1))
    assert a[:4] == [
        "a photo of the large unblemished bracket.",
        "a photo of the large bracket with damage.",
        "a photo of the small unblemished brick.",
        "a photo of the small brick with defect.",
    ]
    assert len(a) == 2 * 7 and a == ensemble_sentences(torch.Generator().manual_seed(1))
    assert a != ensemble_sentences(torch.Generator().manual_seed(2))  # drawn anew each step


def test_ensemble_loss_targets_the_abnormal_sentence_by_coverage():
    pair = torch.eye(2)[None]  # one class: normal sentence along x, abnormal along y
    patches = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # unnormalised on purpose
    cov = torch.tensor([[0.0, 0.75, 0.5]])
    got = ensemble_loss(patches, pair, torch.tensor([0]), cov, torch.tensor(2.0))
    lse = math.log(math.exp(2) + 1)  # logits (2, 0) or (0, 2) at scale 2; (sqrt 2, sqrt 2) for p2
    untouched = lse - 2  # patch 0: all normal, its logit 2
    p1 = 0.25 * (lse - 0) + 0.75 * (lse - 2)
    p2 = math.log(2)  # equal logits: the cross-entropy is log 2 whatever the target
    assert got.item() == pytest.approx(untouched + (p1 + p2) / 2, abs=1e-6)


def test_balanced_mean_weighs_the_touched_patches_as_much_as_the_rest():
    values = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    touched = torch.tensor([[False, False, False, True]])
    assert balanced_mean(values, touched).item() == 2.0 + 6.0
    assert balanced_mean(values, torch.zeros_like(touched)).item() == 3.0  # no defect in the batch


def test_patch_coverage():
    masks = torch.zeros(1, 4, 4)
    masks[0, :2, :1] = 1
    assert patch_coverage(masks, 2).tolist() == [[0.5, 0.0, 0.0, 0.0]]


TINY = BackboneRecipe(
    seed=5,
    n_scenes=6,
    n_validation=6,
    clip=ClipRecipe(steps=2, batch_size=4, warmup=1),
    dinov2=DinoRecipe(steps=2, batch_size=4, warmup=1),
)


def test_build_writes_loadable_weights_reproducibly(tmp_path):
    prov = build(tmp_path / "a", TINY)
    files = sorted(
        p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert files == [
        "README.md",
        "config.json",
        "curve.csv",
        "curve.png",
        "model.safetensors",
        CLIP_FILE,
        "provenance.json",
    ]
    assert prov["sha256"][CLIP_FILE] == file_sha256(tmp_path / "a" / CLIP_FILE)
    assert prov["generator_version"] and prov["recipe"]["seed"] == 5
    assert DEMO_BACKBONES_LABEL.split(";")[0] in (tmp_path / "a" / "README.md").read_text()
    curve = (tmp_path / "a" / "curve.csv").read_text().splitlines()
    assert curve[0] == "model,step,caption,cls,patch,patch_region,prompt_wording,total"
    assert len(curve) == 5
    # the same seed gives the same files (same machine and threads)
    build(tmp_path / "b", TINY)
    assert compare(tmp_path / "b", tmp_path / "a") == (
        True,
        ["identical: SHA-256 of all 3 files equal"],
    )
    # files that differ (another machine's kernels): the final losses decide
    prov_a = json.loads((tmp_path / "a" / "provenance.json").read_text())
    other = dict(prov_a, sha256=dict(prov_a["sha256"], **{CLIP_FILE: "0" * 64}))
    (tmp_path / "b" / "provenance.json").write_text(json.dumps(other))
    ok, lines = compare(tmp_path / "b", tmp_path / "a")
    assert ok and lines[0] == f"not bit-identical: {CLIP_FILE}"
    assert all(line.endswith("(ok)") for line in lines[1:]) and len(lines) == 1 + 5 + 4 + 2
    loss = prov_a["final_loss"]["clip"]["total"]
    other["final_loss"] = dict(
        prov_a["final_loss"], clip=dict(prov_a["final_loss"]["clip"], total=loss * 1.1)
    )
    (tmp_path / "b" / "provenance.json").write_text(json.dumps(other))
    ok, lines = compare(tmp_path / "b", tmp_path / "a")
    assert not ok
    assert f"clip final total: {loss * 1.1} vs {loss} (DIFFERS)" in lines
    # the written weights load through the profile's loaders
    cfg = load_config(DEMO).model_for("hxpe")
    clip_cfg = cfg.clip.model_copy(update={"pretrained": str(tmp_path / "a" / CLIP_FILE)})
    clip, _ = load_clip(clip_cfg)
    want = new_clip(5)[0]
    assert not torch.equal(clip.visual.conv1.weight, want.visual.conv1.weight)  # trained


def test_demo_profile_loads_the_committed_backbones(caplog):
    cfg = load_config(DEMO)
    m = cfg.model_for("hxpe")
    assert m.clip.pretrained == "hxpe/model/weights/demo/open_clip_model.safetensors"
    assert m.vfm.weights_dir == "hxpe/model/weights/demo" and m.vfm.config_file is None
    assert required_weight_keys(cfg) == []  # nothing to fetch
    assert list(cfg.random_init_backbones()) == ["clip (random init)"]  # only WinCLIP's tiny CLIP
    with caplog.at_level("INFO"):
        clip, _ = load_clip(m.clip)
        dino = load_dinov2(m.vfm)
    assert "RANDOM" not in caplog.text
    from safetensors.torch import load_file

    stored = load_file(DEFAULT_OUT / CLIP_FILE)
    assert torch.equal(clip.visual.conv1.weight, stored["visual.conv1.weight"])
    assert not torch.equal(clip.visual.conv1.weight, new_clip(1000)[0].visual.conv1.weight)
    assert type(dino).__name__ == "Dinov2Model" and dino.config.hidden_size == 64
    assert not torch.equal(dino.embeddings.cls_token, new_dinov2(1001).embeddings.cls_token)


def test_demo_reads_its_maps_at_the_demo_clips_own_logit_scale():
    from safetensors.torch import load_file

    scale = load_file(DEFAULT_OUT / CLIP_FILE)["logit_scale"].exp().item()
    cfg = load_config(DEMO).model_for("hxpe")
    assert cfg.adaclip.temperature == pytest.approx(1 / scale, abs=5e-4)
    assert load_config(DEMO).model_for("anomalyclip").anomalyclip.temperature == 0.07


def test_committed_weights_match_their_provenance_and_stay_small():
    prov = json.loads((DEFAULT_OUT / "provenance.json").read_text())
    total = 0
    for name, digest in prov["sha256"].items():
        assert file_sha256(DEFAULT_OUT / name) == digest, name
        total += (DEFAULT_OUT / name).stat().st_size
    assert total <= 20e6
    assert prov["recipe"] == json.loads(
        json.dumps(BackboneRecipe().__dict__, default=lambda o: o.__dict__)
    )


def test_missing_weights_say_how_to_get_them(tmp_path):
    m = load_config(DEMO).model_for("hxpe")
    with pytest.raises(MissingWeightsError, match="make demo-backbones"):
        load_clip(m.clip.model_copy(update={"pretrained": str(tmp_path / "none.safetensors")}))
    with pytest.raises(MissingWeightsError, match=r"model.vfm.weights_dir .*does not exist"):
        load_dinov2(m.vfm.model_copy(update={"weights_dir": str(tmp_path / "none")}))
    assert F is not None


def test_dinov2_loads_from_its_folder_without_a_progress_bar_and_keeps_the_setting(capfd):
    """A notebook saves transformers' "Loading weights" bar as a widget (make booktest refuses it)."""
    from transformers.utils import logging as hf_logging

    from hxpe.model.loading import dinov2_from_folder
    from hxpe.paths import repo_root

    hf_logging.enable_progress_bar()
    model = dinov2_from_folder(repo_root() / "hxpe" / "model" / "weights" / "demo")
    assert type(model).__name__ == "Dinov2Model"
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is restored


def test_demo_validation_points_the_profile_at_other_seeds_and_weights(tmp_path):
    from hxpe.backbones.demo_validation import seed_config, summarise, weights_overrides

    cfg = seed_config(7, weights_overrides(tmp_path / "bb"))
    assert cfg.data.demo.seed == 7
    assert cfg.model.clip.pretrained == str(tmp_path / "bb" / "open_clip_model.safetensors")
    assert cfg.model.vfm.weights_dir == str(tmp_path / "bb")
    assert load_config(DEMO).data.demo.seed == 0  # the demo's own sets are another seed
    per_seed = {
        7: {"image_auroc": 70.0, "pixel_auroc": 80.0, "pixel_aupro_anomalyclip": 40.0},
        8: {"image_auroc": 75.0, "pixel_auroc": 81.0, "pixel_aupro_anomalyclip": 45.0},
    }
    assert summarise(per_seed) == {
        "image_auroc": 72.5,
        "pixel_auroc": 80.5,
        "pixel_aupro_anomalyclip": 42.5,
    }


def test_validation_replaces_only_its_own_run_folders(tmp_path) -> None:
    from hxpe.atomic import OutputRefused
    from hxpe.backbones.demo_validation import fresh_run_dir

    mine = tmp_path / "seed7" / "runs" / "notes"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("a user's file")
    with pytest.raises(OutputRefused, match="not a previous demo-validation run"):
        fresh_run_dir(tmp_path, 7, "notes")
    assert (mine / "keep.txt").read_text() == "a user's file"
    previous = fresh_run_dir(tmp_path, 7, "base")
    for sub in ("agent", "data", "index"):
        (previous / sub).mkdir()
    assert list(fresh_run_dir(tmp_path, 7, "base").iterdir()) == []
