"""Training: loss goes down for each base, checkpoints round-trip, files and protocol helpers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hxpe.config import Config
from hxpe.data.fixtures import IndexWriter
from hxpe.data.index import DatasetIndex, load_index, save_index
from hxpe.data.torch_dataset import IndexDataset
from hxpe.model.checkpoint import load_checkpoint, model_for_evaluation
from hxpe.model.config import TrainConfig
from hxpe.model.hxpe import build_model
from hxpe.model.losses import LossSpec, hxpe_loss
from hxpe.model.tiny import TINY_MODEL
from hxpe.train import train, trainable_variants

SIZE = 112


def make_dataset(root: Path, n_good: int = 2, n_bad: int = 4, seed: int = 0) -> DatasetIndex:
    """Textured images of one class; 'bad' ones carry a bright square defect with its mask."""
    rng = np.random.default_rng(seed)
    writer = IndexWriter(root, "toy")

    def write(split: str, defect: str, stem: str, box: tuple[int, int, int] | None) -> None:
        img = (rng.random((SIZE // 8, SIZE // 8, 3)) * 80 + 60).astype(np.uint8)
        img = np.kron(img, np.ones((8, 8, 1), dtype=np.uint8))
        mask = None
        if box is not None:
            y, x, s = box
            img[y : y + s, x : x + s] = (250, 30, 200)
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[y : y + s, x : x + s] = 255
        writer.add("widget", split, defect, stem, img, mask)

    write("train", "good", "000", None)
    for i in range(n_good):
        write("test", "good", f"{i:03d}", None)
    for i in range(n_bad):
        y, x = (int(v) for v in rng.integers(10, SIZE - 40, size=2))
        write("test", "blob", f"{i:03d}", (y, x, 28))
    return load_index(save_index(writer.index(), root.parent / "index"))


def profile(**train: object) -> Config:
    return Config.model_validate(
        {
            "profile": "test",
            "seed": 3,
            "model": TINY_MODEL,
            "train": {"epochs": 4, "lr": 0.01, "batch_size": 2} | train,
            "variants": {
                "adaclip": {
                    "base": "adaclip",
                    "explain": {"enabled": False},
                    "vfm": {"enabled": False},
                },
                "anomalyclip": {"base": "anomalyclip", "vfm": {"enabled": False}},
                "hxpe": {"base": "adaclip"},
                "winclip": {
                    "base": "winclip",
                    "explain": {"enabled": False},
                    "vfm": {"enabled": False},
                },
            },
        }
    )


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> DatasetIndex:
    return make_dataset(tmp_path_factory.mktemp("toy") / "data")


def phrases_for(index: DatasetIndex) -> dict[str, str | None]:
    return {
        r.image_id: ("bright magenta square blob" if r.label else None)
        for r in index.frame.itertuples()
    }


def dataset_loss(model, index: DatasetIndex, phrases: dict) -> float:
    ds = IndexDataset(index, SIZE, "test", phrases)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        out = model(batch["image"], [p or None for p in batch["phrase"]])
        spec = LossSpec.resolve(model.cfg, TrainConfig())
        losses = hxpe_loss(out, batch["mask"], batch["label"], spec)
    return float(losses["total"])


@pytest.mark.parametrize("variant", ["adaclip", "anomalyclip"])
def test_training_lowers_the_loss(toy: DatasetIndex, tmp_path: Path, variant: str) -> None:
    cfg = profile()
    phrases = phrases_for(toy)
    before = dataset_loss(build_model(cfg.model_for(variant)).eval(), toy, phrases)
    ckpt = train(cfg, toy, phrases, tmp_path / variant, variant)
    after = dataset_loss(load_checkpoint(ckpt).eval(), toy, phrases)
    assert after < before * 0.9, (before, after)


def test_checkpoint_files_round_trip_and_atomic_write(toy: DatasetIndex, tmp_path: Path) -> None:
    cfg = profile(epochs=1)
    phrases = phrases_for(toy)
    out = tmp_path / "checkpoints" / "toy_dir" / "hxpe"
    assert train(cfg, toy, phrases, out, "hxpe") == out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["trainable.safetensors", "config.json", "provenance.json", "loss.csv", "loss.png"]
    )
    assert [p.name for p in out.parent.iterdir()] == ["hxpe"]  # no temporary leftovers
    state = load_file(out / "trainable.safetensors")
    assert state and all(k.startswith("prompter.") for k in state)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["base"] == "adaclip" and config["train"]["batch_size_resolved"] == 2
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["seed"] == 3 and "torch" in provenance["versions"]
    rows = list(csv.DictReader((out / "loss.csv").open()))
    assert len(rows) == 3 and float(rows[0]["total"]) > 0  # 6 test images, batch 2
    assert (out / "loss.png").stat().st_size > 1000

    refs = {"widget": toy.split("train").iloc[0]["image_id"]}
    ds = IndexDataset(toy, SIZE, "test", phrases, refs)
    batch = torch.utils.data.default_collate([ds[i] for i in range(3)])
    a = model_for_evaluation(cfg, "toy_dir", "hxpe", tmp_path)
    b = load_checkpoint(out)
    args = (batch["image"], [p or None for p in batch["phrase"]], batch["reference"])
    with torch.no_grad():
        ma, mb = a(*args, batch["has_reference"]), b(*args, batch["has_reference"])
    assert torch.equal(ma.anomaly_map, mb.anomaly_map)
    assert torch.equal(ma.image_score, mb.image_score)
    fresh = build_model(cfg.model_for("hxpe")).eval()
    with torch.no_grad():
        mf = fresh(*args, batch["has_reference"])
    assert not torch.allclose(mf.anomaly_map, ma.anomaly_map)

    train(cfg, toy, phrases, out, "hxpe")  # overwriting an existing checkpoint works
    assert sorted(p.name for p in out.parent.iterdir()) == ["hxpe"]


def test_variants_and_evaluation_models(tmp_path: Path) -> None:
    cfg = profile()
    assert trainable_variants(cfg) == ["adaclip", "anomalyclip", "hxpe"]
    model = model_for_evaluation(cfg, "toy_dir", "winclip", tmp_path)
    assert model.trainable_state() == {} and not model.training
    with pytest.raises(FileNotFoundError, match="No checkpoint for variant 'hxpe'"):
        model_for_evaluation(cfg, "toy_dir", "hxpe", tmp_path)
    with pytest.raises(ValueError, match="nothing to train"):
        train(cfg, None, {}, tmp_path / "w", "winclip")  # type: ignore[arg-type]
