"""Stage 06 figures and the explorer, from a tiny results tree built by the real stages 01-05 code
(generated images, classical describer + rule extractor, tiny random-init models, run_protocol)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from hxpe.agent import run_describe, run_extract
from hxpe.config import Config, load_config
from hxpe.data.fixtures import IndexWriter
from hxpe.data.index import DatasetIndex, save_index
from hxpe.evaluation.protocol import run_protocol
from hxpe.figures.selection import (
    card_rows,
    comparison_roles,
    f1_max_threshold,
    learnable_only_variant,
    winclip_variant,
)
from hxpe.figures.stage import make_all, word_importance
from hxpe.figures.style import DEMO_NOTE
from hxpe.model.checkpoint import save_checkpoint
from hxpe.model.model import build_model
from hxpe.model.tiny import TINY_MODEL
from hxpe.paths import RESULTS_ROOT_ENV

SIZE = 64
DIRECTION = "aux_to_target"
TARGET = "target"


def _texture(seed: int, tone: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 12, (SIZE // 4, SIZE // 4, 3)).repeat(4, 0).repeat(4, 1)
    return np.clip(tone + noise, 0, 255).astype(np.uint8)


def _defect(img: np.ndarray, kind: str, seed: int) -> tuple[Image.Image, Image.Image]:
    """A dark scratch or a red spot drawn at a seed-dependent place, and its mask."""
    im, mask = Image.fromarray(img), Image.new("L", (SIZE, SIZE), 0)
    x, y = 8 + (7 * seed) % 30, 10 + (5 * seed) % 30
    if kind == "scratch":
        box = [x, y, x + 22, y + 12]
        ImageDraw.Draw(im).line(box, fill=(15, 15, 15), width=3)
        ImageDraw.Draw(mask).line(box, fill=255, width=3)
    else:
        box = [x, y, x + 12, y + 12]
        ImageDraw.Draw(im).ellipse(box, fill=(210, 40, 30))
        ImageDraw.Draw(mask).ellipse(box, fill=255)
    return im, mask


def build_index(data_root: Path) -> DatasetIndex:
    """Two classes: one train normal, two test normals, three test defects with masks each."""
    writer = IndexWriter(data_root, TARGET)
    for c, (cls, tone) in enumerate({"plate": 150, "tile": 90}.items()):
        writer.add(cls, "train", "good", "000", _texture(100 * c, tone))
        for i in range(2):
            writer.add(cls, "test", "good", f"{i:03d}", _texture(100 * c + i + 1, tone))
        for i, kind in enumerate(["scratch", "spot", "scratch"]):
            img, mask = _defect(_texture(100 * c + 10 + i, tone), kind, i + 3 * c)
            writer.add(cls, "test", kind, f"{i:03d}", img, mask)
    return writer.index()


def fixture_config() -> Config:
    off = {"explain": {"enabled": False}, "vfm": {"enabled": False}}
    return Config.model_validate(
        {
            "profile": "fixture",
            "model": TINY_MODEL | {"base": "adaclip"},
            "agent": {
                "describe": {"backend": "classical", "model_id": "classical"},
                "extract": {"backend": "rules", "model_id": "rules"},
            },
            "evaluation": {
                "directions": [{"name": DIRECTION, "train": "aux", "test": [TARGET]}],
                "image_size": SIZE,
                "batch_size": 8,
                "num_workers": 0,
                "metrics_device": "cpu",
                "aupro_steps": 20,
            },
            "figures": {"images_per_dataset": 4, "cards_per_kind": 1, "word_examples": 2},
            "variants": {"hxpe": {}, "adaclip": off, "winclip": {"base": "winclip", **off}},
        }
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Config, Path]:
    """``(cfg, results/<profile>)`` after stages 01-05 ran on the generated dataset."""
    base = tmp_path_factory.mktemp("figures")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(RESULTS_ROOT_ENV, str(base / "results"))
        cfg = fixture_config()
        rd = cfg.results_dir
        index = build_index(base / "data" / TARGET)
        save_index(index, rd / "index" / TARGET)
        agent = rd / "agent"
        run_describe(index, cfg.agent, agent / "descriptions.jsonl")
        run_extract(agent / "descriptions.jsonl", cfg.agent, agent / "extractions.jsonl")
        for variant in ("hxpe", "adaclip"):
            ckpt = rd / "checkpoints" / DIRECTION / variant
            ckpt.mkdir(parents=True)
            save_checkpoint(build_model(cfg.model_for(variant)), ckpt, {"note": "untrained"})
        run_protocol(cfg)
    return cfg, rd


@pytest.fixture
def use_results(results, monkeypatch) -> tuple[Config, Path]:
    cfg, rd = results
    monkeypatch.setenv(RESULTS_ROOT_ENV, str(rd.parent))
    return cfg, rd


def assert_real_png(path: Path) -> None:
    assert path.stat().st_size > 5_000, f"{path} is suspiciously small"
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, f"{path} looks blank"


def test_make_all_writes_every_figure(use_results) -> None:
    cfg, rd = use_results
    written = make_all(cfg)
    names = {p.name for p in written}
    tag = f"{DIRECTION}_{TARGET}"
    stems = [
        f"qualitative_{tag}",
        f"cards_{tag}",
        f"comparison_{tag}",
        "metrics_per_dataset",
        "ablation",
        "word_importance",
    ]
    for stem in stems:
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
        assert_real_png(rd / "figures" / f"{stem}.png")
        assert (rd / "figures" / f"{stem}.pdf").stat().st_size > 5_000
    table = pd.read_csv(rd / "figures" / "word_importance.csv")
    for _, group in table.groupby("image_id"):
        assert group["word"].tolist() == group["phrase"].iloc[0].split()


def test_missing_optional_artifacts_are_skipped(use_results, tmp_path, monkeypatch, caplog) -> None:
    cfg, rd = use_results
    copy = tmp_path / "fixture"
    shutil.copytree(rd, copy, ignore=shutil.ignore_patterns("figures"))
    shutil.rmtree(copy / "metrics")
    shutil.rmtree(copy / "maps" / DIRECTION / "winclip")
    shutil.rmtree(copy / "maps" / DIRECTION / "hxpe" / TARGET / "vfm")
    shutil.rmtree(copy / "checkpoints")
    (copy / "agent" / "descriptions.jsonl").unlink()
    monkeypatch.setenv(RESULTS_ROOT_ENV, str(tmp_path))
    with caplog.at_level(logging.INFO, logger="hxpe.figures"):
        written = make_all(cfg)
    names = {p.name for p in written}
    assert f"qualitative_{DIRECTION}_{TARGET}.png" in names
    assert f"comparison_{DIRECTION}_{TARGET}.png" in names  # HXPE vs learnable only
    assert "ablation.png" not in names and "word_importance.png" not in names
    text = caplog.text
    assert "no stored DINOv2 prompts" in text
    assert "per_dataset.csv is missing" in text or "per_class.csv is missing" in text
    assert "skipped word_importance" in text


def test_demo_note_is_visible(use_results) -> None:
    import matplotlib.pyplot as plt

    from hxpe.figures.style import add_note

    cfg, _ = use_results
    fig = plt.figure()
    add_note(fig, cfg)  # the fixture's CLIP is random-init, like the demo's
    assert any(t.get_text() == DEMO_NOTE for t in fig.texts)
    plt.close(fig)


def test_word_importance_matches_separate_forwards() -> None:
    cfg = fixture_config()
    model = build_model(cfg.model_for("hxpe")).eval()
    g = torch.Generator().manual_seed(0)
    image, ref = torch.rand(3, SIZE, SIZE, generator=g), torch.rand(3, SIZE, SIZE, generator=g)
    phrase = "small dark scratch on the upper left"
    values = word_importance(model, image, phrase, ref)
    assert [w for w, _ in values] == phrase.split()
    with torch.no_grad(), model.same_rng_per_image():  # HSF k-means: same draw per forward
        full = model(image[None], [phrase], ref[None], torch.tensor([True])).image_score[0]
        drop = model(
            image[None], ["small scratch on the upper left"], ref[None], torch.tensor([True])
        )
    assert values[1][1] == pytest.approx(float(full - drop.image_score[0]), abs=1e-5)
    single = word_importance(model, image, "scratch")
    assert len(single) == 1 and single[0][0] == "scratch"


def test_explorer_static_and_interactive(use_results) -> None:
    from matplotlib.figure import Figure

    from hxpe.explorer import explore

    cfg, _ = use_results
    fig = explore(cfg, interactive=False, n_static=3)
    assert isinstance(fig, Figure) and len(fig.axes) >= 3 * 4
    box = explore(cfg, interactive=True)
    pickers = [c for row in box.children[:2] for c in row.children]
    image_picker = next(p for p in pickers if p.description == "image")
    assert len(image_picker.options) == 5
    image_picker.value = image_picker.options[-1][1]  # re-renders without error


def test_variant_roles_of_the_paper_profile() -> None:
    cfg = load_config("notebooks/params/paper.yaml")
    assert learnable_only_variant(cfg) == "adaclip"
    assert winclip_variant(cfg) == "winclip"
    assert [r.variant for r in comparison_roles(cfg)] == ["hxpe", "adaclip", "winclip"]


def test_card_split_at_f1_max_threshold() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.7, 0.6, 0.8, 0.3])
    t = f1_max_threshold(labels, scores)
    assert t == pytest.approx(0.3)
    frame = pd.DataFrame({"image_id": list("abcdef"), "label": labels, "image_score": scores})
    kinds, threshold = card_rows(frame, 5)
    assert threshold == t
    assert kinds["hit"]["image_id"].tolist() == ["e", "d", "f"]
    assert kinds["false alarm"]["image_id"].tolist() == ["c"]
    assert kinds["miss"].empty


def test_demo_note_sits_below_the_tick_labels(use_results) -> None:
    import matplotlib.pyplot as plt

    from hxpe.figures.style import add_note

    cfg, _ = use_results
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["visa", "mpdd", "btad"], [1, 2, 3])
    ax.set_xlabel("dataset")
    add_note(fig, cfg)
    renderer = fig.canvas.get_renderer()
    note = next(t for t in fig.texts if t.get_text() == DEMO_NOTE)
    top_of_note = note.get_window_extent(renderer).y1
    labels = [t.get_window_extent(renderer).y0 for t in ax.get_xticklabels() + [ax.xaxis.label]]
    assert top_of_note < min(labels)
    plt.close(fig)


def test_cards_leave_an_absent_kind_out_and_say_so(use_results, monkeypatch) -> None:
    from hxpe.figures import panels
    from hxpe.figures.artifacts import Artifacts

    cfg, _ = use_results
    real = panels.card_rows

    def without_misses(scores, per_kind):
        kinds, threshold = real(scores, per_kind)
        kinds["miss"] = kinds["miss"].head(0)
        return kinds, threshold

    monkeypatch.setattr(panels, "card_rows", without_misses)
    fig = panels.cards_figure(Artifacts(cfg), DIRECTION, TARGET)
    assert "no misses" in fig._suptitle.get_text()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts and not any(t.startswith("MISS") for t in texts)
    assert all(t.split()[0] in ("HIT", "FALSE") for t in texts if t)


def test_a_word_panel_without_bars_says_why() -> None:
    import matplotlib.pyplot as plt

    from hxpe.figures.words import word_bars

    fig, ax = plt.subplots()
    word_bars(ax, "dark scratch", [("dark", 0.0), ("scratch", 0.0)], score=1.0)
    assert any("saturated at 1.000000" in " ".join(t.get_text().split()) for t in ax.texts)
    fig2, ax2 = plt.subplots()
    word_bars(ax2, "dark scratch", [("dark", 0.2), ("scratch", -0.1)], score=0.6)
    assert len(ax2.texts) == 0
    plt.close(fig)
    plt.close(fig2)
