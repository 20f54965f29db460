"""The notebooks' one-example walk-throughs (hxpe.figures.walkthrough) and the curves they draw."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from hxpe.agent import extract_one, load_descriptions, run_describe
from hxpe.agent.config import AgentConfig
from hxpe.agent.templates import load_template
from hxpe.data.index import DatasetIndex, make_image_id, validate_frame
from hxpe.data.torch_dataset import IndexDataset
from hxpe.evaluation.metrics import aupro, auroc, pro_curve, roc_curve, truncated_auc
from hxpe.figures import walkthrough as wt
from hxpe.figures.selection import f1_max_threshold
from hxpe.hashing import file_sha256
from hxpe.model.config import TrainConfig
from hxpe.model.dinov2_prompt import reference_distance
from hxpe.model.model import build_model
from hxpe.model.tiny import tiny_model_config

matplotlib.use("Agg")
SIZE = 64
AGENT = AgentConfig.model_validate(
    {
        "describe": {"backend": "classical", "model_id": "classical"},
        "extract": {"backend": "rules", "model_id": "rules"},
    }
)


def _image(seed: int, defect: bool) -> tuple[Image.Image, Image.Image | None]:
    rng = np.random.default_rng(seed)
    base = np.clip(120 + rng.normal(0, 10, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(base)
    if not defect:
        return img, None
    mask = Image.new("L", (SIZE, SIZE), 0)
    box = [20, 20, 36, 34]
    ImageDraw.Draw(img).ellipse(box, fill=(20, 20, 20))
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return img, mask


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> DatasetIndex:
    """One class 'plate': train/good/000, test/good/000-001, test/hole/000-001 with masks."""
    root = tmp_path_factory.mktemp("walk")
    rows = []
    for split, defect, stem, seed in [
        ("train", "good", "000", 0),
        ("test", "good", "000", 1),
        ("test", "good", "001", 2),
        ("test", "hole", "000", 3),
        ("test", "hole", "001", 4),
    ]:
        img, mask = _image(seed, defect != "good")
        rel = f"plate/{split}/{defect}/{stem}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
        mask_rel = ""
        if mask is not None:
            mask_rel = f"plate/ground_truth/{defect}/{stem}_mask.png"
            (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            mask.save(root / mask_rel)
        rows.append(
            {
                "image_id": make_image_id("walk", "plate", split, defect, rel),
                "dataset": "walk",
                "cls": "plate",
                "split": split,
                "label": int(defect != "good"),
                "defect_type": defect,
                "image": rel,
                "mask": mask_rel,
                "sha256": file_sha256(root / rel),
            }
        )
    return DatasetIndex("walk", root, validate_frame(pd.DataFrame(rows)))


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_model_config("adaclip")).eval()


def test_example_row_and_example_index(index):
    row = wt.example_row(index)
    assert row["image_id"] == "walk/plate/test/hole/000"
    small = wt.example_index(index, row["image_id"], "first_normal_train")
    assert sorted(small.frame["image_id"]) == [
        "walk/plate/test/hole/000",
        "walk/plate/train/good/000",
    ]
    fig = wt.image_mask_figure(index, row, size=64)
    assert [ax.get_title() for ax in fig.axes] == ["image", "ground-truth mask", "mask outlined"]
    assert fig.axes[1].images[0].get_array().max() == 1.0


def test_protocol_figure_draws_one_arrow_per_target():
    fig = wt.protocol_figure([("a_to_b", "mvtec", ["visa", "mpdd"]), ("b_to_a", "visa", ["mvtec"])])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "train on\nmvtec" in texts and "train on\nvisa" in texts
    assert {"test on visa", "test on mpdd", "test on mvtec"} <= set(texts)
    arrows = [c for c in fig.axes[0].get_children() if type(c).__name__ == "Annotation"]
    assert len(arrows) == 3


def test_describe_example_shows_the_exact_prompt_and_the_cached_answer(index, tmp_path):
    image_id = wt.example_row(index)["image_id"]
    cache = tmp_path / "descriptions.jsonl"
    small = wt.example_index(index, image_id, "first_normal_train")
    report = run_describe(small, AGENT, cache)
    assert (report.done, report.total) == (
        1,
        1,
    )  # the test image only; the reference is a train image
    frame = load_descriptions(cache)
    one = wt.describe_example(frame, image_id)
    assert one.reference_id == "walk/plate/train/good/000"
    assert one.prompt == load_template("describe_v1").render(class_name="plate")
    assert one.answer == frame.iloc[0]["text"] and one.answer
    # the full run reuses the example's record
    assert run_describe(index, AGENT, cache).cached == 1
    fig = wt.pair_figure(index, one.image_id, one.reference_id)
    assert fig.axes[0].get_title().startswith("Image 1: normal reference")
    with pytest.raises(KeyError, match="run the describe stage"):
        wt.describe_example(frame, "walk/plate/test/good/001")


@pytest.mark.parametrize(
    ("llm", "description", "rule", "start"),
    [
        (True, "A dark hole in the centre.", "llm_and_vlm", "judged ANOMALOUS"),
        (True, "No anomaly", "llm_and_vlm", "judged NORMAL: the LLM reports a defect, but"),
        (True, "No anomaly", "llm", "judged ANOMALOUS"),
        (False, "A dark hole.", "llm_and_vlm", "judged NORMAL: the LLM reports no defect"),
        (None, "A dark hole.", "llm_and_vlm", "no verdict: the extraction failed"),
    ],
)
def test_gate_reason_follows_the_verdict_rule(llm, description, rule, start):
    assert wt.gate_reason(llm, description, rule).startswith(start)


def test_extraction_example_with_the_rules_extractor():
    text = "There is a small dark scratch in the upper left of the image. It looks like a scratch."
    result = extract_one(text, AGENT)
    one = wt.extraction_example(text, result, AGENT)
    assert one["prompt"] == load_template("extract_v1").render(description=text)
    assert one["system"] == load_template("extract_v1").system
    assert one["parsed"]["anomaly"] is True and one["parsed"]["phrase"] == result["phrase"]
    assert '"anomaly": true' in one["raw"]
    assert one["verdict"] is True and one["reason"].startswith("judged ANOMALOUS")
    frame = pd.DataFrame({"status": ["ok"], "text": [text], "image_id": ["x"]})
    assert wt.example_description(frame)["image_id"] == "x"
    assert wt.example_description(frame.assign(status="failed")) is None


def test_gate_figure_titles_the_phrase_and_the_decision(index):
    one = {"parsed": {"phrase": "dark hole"}, "reason": "judged ANOMALOUS: because"}
    fig = wt.gate_figure(index, "walk/plate/test/hole/000", one)
    title = fig._suptitle.get_text()
    assert "phrase: dark hole" in title and "gate: judged ANOMALOUS" in title
    failed = wt.gate_figure(
        index, "walk/plate/test/hole/000", {"parsed": None, "reason": "no verdict: x"}
    )
    assert "phrase: (none)" in failed._suptitle.get_text()


def test_outcome_counts_names_failure_reasons():
    frame = pd.DataFrame(
        {
            "status": ["ok", "ok", "ok", "failed", "failed"],
            "verdict": [True, False, True, None, None],
            "error": [None, None, None, "invalid_json: no object", "schema: phrase"],
        }
    )
    got = wt.outcome_counts(frame).set_index(["outcome", "reason"])["n"].to_dict()
    assert got == {
        ("anomalous", ""): 2,
        ("normal", ""): 1,
        ("failed", "invalid_json"): 1,
        ("failed", "schema"): 1,
    }


def test_prompt_sentences_and_token_layout(model):
    phrase = "small dark hole on the left"
    frame = wt.prompt_sentences(model.text, phrase)
    with_phrase = frame[frame["phrase"]]
    assert len(with_phrase) == len(model.text.sentences("abnormal", None))
    assert all("object with small dark hole on the left" in s for s in with_phrase["sentence"])
    assert not frame[~frame["phrase"]]["sentence"].str.contains("hole").any()
    plate = wt.prompt_sentences(model.text, phrase, obj="plate")
    assert plate[plate["phrase"]]["sentence"].str.contains("plate with small dark hole").all()
    layout = wt.token_layout(model.text, "abnormal", phrase)
    roles = [r for _, r in layout]
    prompter = model.text.prompter
    assert roles.count("slot") + roles.count("deep prompt (learned)") == prompter.text_slots
    assert roles.count("learnable context") == prompter.text_context
    assert roles[0] == roles[-1] == "SOT/EOT"
    assert " ".join(t for t, r in layout if r == "phrase word") == phrase
    ids = model.text.tokens("abnormal", phrase)[0]
    assert len(layout) == int((ids != 0).sum())
    fig = wt.token_slot_figure({"abnormal + phrase": layout})
    assert len(fig.axes[0].patches) == len(layout)


@pytest.mark.parametrize("base", ["adaclip", "anomalyclip"])
@pytest.mark.parametrize("layout", ["overwrite", "slots"])
def test_token_layout_follows_the_deep_prompts_the_text_encoder_receives(base, layout):
    cfg = tiny_model_config(base)
    section = getattr(cfg, base).model_copy(update={"text_layout": layout})
    model = build_model(cfg.model_copy(update={base: section}))
    prompter = model.text.prompter
    deep = prompter.text_deep(torch.zeros(1, model.visual.visual.proj.shape[1]), 1)
    blocks = tuple(i for i, d in enumerate(deep) if d is not None)
    assert blocks == prompter.text_deep_blocks
    assert {d.shape[1] for d in deep if d is not None} == {prompter.text_deep_length}
    first = wt.token_layout(model.text, "abnormal", None, block=0)
    later = wt.token_layout(model.text, "abnormal", None, block=blocks[-1])
    n = prompter.text_deep_length
    assert [r for _, r in later[1 : 1 + n]] == ["deep prompt (learned)"] * n
    assert later[1 + n :] == first[1 + n :]  # the rest of the sentence is untouched
    if layout == "overwrite":
        assert 0 not in blocks  # block 1 reads the sentence as it is
        assert "deep prompt (learned)" not in [r for _, r in first]
        hidden = [r for _, r in first[1 : 1 + n]]
        expected = "learnable context" if base == "anomalyclip" else "word"
        assert set(hidden) == {expected}  # what the deep prompts overwrite
    layouts = wt.token_layouts(model.text, "small hole")
    assert len(layouts) == (6 if layout == "overwrite" else 3)


def test_vfm_panels_show_the_models_own_steps(model, index):
    from hxpe.data.torch_dataset import load_image

    image = load_image(index.abs_path(wt.example_row(index)["image"]), SIZE)
    ref = load_image(index.abs_path(index.row("walk/plate/train/good/000")["image"]), SIZE)
    with torch.no_grad():
        out = model(torch.stack([image, image]), [None, None], torch.stack([ref, image]),
                    trace=True)  # fmt: skip
    side = model.cfg.clip.image_size
    grid = model.visual.grid((side, side))
    panels = wt.vfm_panels(out.trace.vfm)
    assert list(panels) == ["distance d to reference", "DINOv2 CLS salience", "prompt map M"]
    assert all(v.shape == grid for v in panels.values())
    np.testing.assert_array_equal(panels["prompt map M"], out.vfm_prompt[0].numpy())
    x = torch.nn.functional.interpolate(image[None], size=(side, side), mode="bilinear")
    r = torch.nn.functional.interpolate(ref[None], size=(side, side), mode="bilinear")
    f, _ = model.vfm.features(x, grid)
    fr, _ = model.vfm.features(r, grid)
    expected = reference_distance(f, fr, model.cfg.vfm.distance == "mutual_nn").view(grid)
    np.testing.assert_allclose(panels["distance d to reference"], expected.numpy(), atol=1e-6)
    same = wt.vfm_panels(out.trace.vfm, index=1)
    assert np.abs(same["distance d to reference"]).max() < 1e-5  # every patch matches itself
    with torch.no_grad():
        alone = model(image[None], [None], trace=True)
    no_ref = wt.vfm_panels(alone.trace.vfm)
    assert no_ref["rarity d (no reference)"].min() > 0  # distance to the image's own patches


def test_layer_panels_are_each_layers_abnormal_probability():
    torch.manual_seed(0)
    maps = [torch.rand(1, 2, 3, 3).softmax(dim=1) for _ in range(2)]
    panels = wt.layer_panels(maps, [6, 12])
    assert list(panels) == ["layer 6: p_a", "layer 12: p_a"]
    np.testing.assert_array_equal(panels["layer 6: p_a"], maps[0][0, 1].numpy())
    np.testing.assert_array_equal(panels["layer 12: p_a"], maps[1][0, 1].numpy())
    fig = wt.maps_figure(np.zeros((3, 3, 3)), panels, np.eye(3))
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "layer 6: p_a", "layer 12: p_a"]


def test_loss_table_on_a_mixed_batch(model, index):
    from hxpe.data.torch_dataset import phrases_from_batch
    from hxpe.model.losses import LossSpec, hxpe_loss

    refs = {"plate": "walk/plate/train/good/000"}
    dataset = IndexDataset(index, model.cfg.clip.image_size, "test", {}, refs)
    assert wt.mixed_batch(dataset, n=4)["label"].tolist() == [0, 1, 0, 1]
    batch = wt.mixed_batch(dataset, n=3, first="walk/plate/test/hole/001")
    assert batch["image_id"][0] == "walk/plate/test/hole/001"
    assert batch["label"].tolist() == [1, 0, 1]
    spec = LossSpec.resolve(model.cfg, TrainConfig())  # the base's own weights
    with torch.no_grad():
        out = model(batch["image"], phrases_from_batch(batch), batch["reference"])
    terms = hxpe_loss(out, batch["mask"], batch["label"], spec)
    table = wt.loss_table(terms, spec.weights).set_index("term")
    parts = table.drop("total")
    assert set(parts.index) == {"focal", "dice", "image"}
    assert parts["weighted"].sum() == pytest.approx(table.loc["total", "value"], rel=1e-6)
    assert table.loc["image", "weight"] == spec.weights["image"]


def test_roc_and_pro_curves_integrate_to_the_metrics():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = rng.random(40) + 0.3 * labels
    fpr, tpr = roc_curve(labels, scores)
    assert float(np.trapezoid(tpr, fpr)) == pytest.approx(auroc(labels, scores), abs=1e-12)
    masks = np.zeros((3, 16, 16))
    masks[0, 2:6, 2:6] = 1
    masks[1, 8:15, 1:4] = 1
    maps = rng.random((3, 16, 16)) + 0.5 * masks
    fpr, pro = pro_curve(masks, maps)
    assert fpr[0] == pro[0] == 0 and fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    assert truncated_auc(fpr, pro, 0.3) == pytest.approx(aupro(masks, maps, "exact", 0.3), 1e-12)
    fig = wt.curves_figure(np.array([1, 1, 0]), maps.max((1, 2)), masks, maps)
    assert "PRO curve" in fig.axes[2].get_title()
    assert any(line.get_xdata()[0] == 0.3 for line in fig.axes[2].lines)  # the FPR limit


def test_pixel_f1_threshold_matches_brute_force():
    rng = np.random.default_rng(1)
    masks = rng.random((2, 8, 8)) > 0.7
    maps = np.round(rng.random((2, 8, 8)) + 0.4 * masks, 2)  # ties included
    expected = f1_max_threshold(masks.ravel(), maps.ravel())
    assert wt.pixel_f1_threshold(masks, maps) == pytest.approx(expected)


def test_decision_figure_colours_tp_fp_fn():
    mask = np.zeros((4, 4))
    mask[:2, :2] = 1
    amap = np.zeros((4, 4))
    amap[0, :3] = 0.9  # 2 TP, 1 FP; 2 FN
    fig = wt.decision_figure(np.zeros((4, 4, 3)), mask, amap, 0.5)
    overlay = fig.axes[2].images[1].get_array()
    assert (overlay[..., 1] == 0.8).sum() == 2  # green
    assert (overlay[..., 0] == 0.9).sum() == 1  # red
    assert (overlay[..., 2] == 0.95).sum() == 2  # blue


def test_class_curve_inputs_read_a_map_store(index, tmp_path: Path):
    from hxpe.evaluation.maps import MapStore

    store = MapStore(tmp_path / "store")
    ids = list(index.split("test")["image_id"])
    with store.writer("k") as w:
        for i, image_id in enumerate(ids):
            label = int(index.row(image_id)["label"])
            amap = np.full((8, 8), i / 10, np.float32)
            w.add(image_id, amap, cls="plate", label=label, image_score=i / 10)
    assert wt.curve_class(index) == "plate"
    labels, scores, masks, maps = wt.class_curve_inputs(store, index, "plate")
    assert labels.tolist() == [int(i.split("/")[3] != "good") for i in store.class_maps("plate")[0]]
    assert maps.shape == masks.shape == (4, 8, 8)
    assert masks[labels == 0].sum() == 0 and masks[labels == 1].sum() > 0


def test_knobs_reach_the_one_example_pass():
    cfg = tiny_model_config("adaclip")
    knobs = wt.knob_overrides("adaclip", beta=2.5, gamma=0.0, tau=0.05, sigma=0.0, layout="slots")
    assert knobs == {
        "vfm": {"bias_beta": 2.5, "salience_weight": 0.0},
        "adaclip": {"temperature": 0.05, "text_layout": "slots"},
        "sigma": 0.0,
    }
    tuned = wt.with_knobs(cfg, knobs)
    model = build_model(tuned).eval()
    assert float(model.key_bias.beta) == 2.5
    assert model.text.prompter.text_deep_blocks[0] == 0  # slots: deep prompts from block 1
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(images, [None, None], references=images.flip(0), trace=True)
    assert torch.equal(out.anomaly_map, out.trace.fused)  # σ = 0: no smoothing
    assert torch.allclose(out.trace.key_bias, 2.5 * out.vfm_prompt.flatten(1))
    table = wt.active_settings(tuned, TrainConfig()).set_index("setting")
    assert table.loc["text_layout", "active"] == "slots"
    assert table.loc["text_layout", "alternatives"] == "overwrite"
    assert table.loc["τ", "active"] == "0.05"
    with pytest.raises(ValueError, match="text_layout"):
        wt.with_knobs(cfg, wt.knob_overrides("adaclip", layout="diagonal"))
