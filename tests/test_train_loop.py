"""Training: loss goes down for each base, checkpoints round-trip, files and protocol helpers."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from hxpe.atomic import OutputRefused
from hxpe.config import Config
from hxpe.data.fixtures import IndexWriter
from hxpe.data.index import DatasetIndex, load_index, save_index
from hxpe.data.torch_dataset import IndexDataset
from hxpe.model.checkpoint import load_checkpoint
from hxpe.model.config import TrainConfig
from hxpe.model.inference import model_for_evaluation
from hxpe.model.losses import LossSpec, hxpe_loss
from hxpe.model.model import build_model
from hxpe.model.tiny import TINY_MODEL
from hxpe.train import (
    share_checkpoint,
    train,
    trainable_variants,
    training_groups,
    training_signature,
)

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


def mask_contrast(model, index: DatasetIndex, phrases: dict) -> float:
    """Mean abnormal probability (all layers) inside the defect masks minus outside them."""
    ds = IndexDataset(index, SIZE, "test", phrases)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        out = model(batch["image"], [p or None for p in batch["phrase"]])
    mask = batch["mask"].reshape(len(ds), SIZE, SIZE) > 0.5
    abnormal = torch.stack(
        [
            torch.nn.functional.interpolate(m, size=(SIZE, SIZE), mode="bilinear")[:, 1]
            for m in out.layer_maps
        ]
    ).mean(0)
    return float(abnormal[mask].mean() - abnormal[~mask].mean())


@pytest.mark.parametrize("variant", ["adaclip", "anomalyclip"])
def test_training_lowers_the_loss(toy: DatasetIndex, tmp_path: Path, variant: str) -> None:
    """Four epochs (batch 2, 6 images: 12 steps) cut the dataset loss by at least 25 %, the last
    epoch's mean step loss is below the first's, and the learned maps separate the defects: the
    abnormal probability inside the masks exceeds the outside by more than before training."""
    cfg = profile()
    phrases = phrases_for(toy)
    fresh = build_model(cfg.model_for(variant)).eval()
    before, contrast_before = dataset_loss(fresh, toy, phrases), mask_contrast(fresh, toy, phrases)
    ckpt = train(cfg, toy, phrases, tmp_path / variant, variant)
    trained = load_checkpoint(ckpt).eval()
    after, contrast_after = (
        dataset_loss(trained, toy, phrases),
        mask_contrast(trained, toy, phrases),
    )
    assert after < before * 0.75, (before, after)
    rows = pd.read_csv(ckpt / "loss.csv")
    assert list(rows["step"]) == list(range(1, 13)) and list(rows["epoch"]) == [
        e for e in (1, 2, 3, 4) for _ in range(3)
    ]
    by_epoch = rows.groupby("epoch")["total"].mean()
    assert by_epoch[4] < by_epoch[1], by_epoch
    assert contrast_after > max(contrast_before, 0.0) + 0.3, (contrast_before, contrast_after)


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
    assert isinstance(provenance["seconds"], float)  # to the hundredth, not whole seconds
    assert provenance["device"] == "cpu" and provenance["variant"] == "hxpe"
    assert sorted(provenance) == sorted(
        ["git", "versions", "seed", "deterministic", "device", "started", "finished", "seconds"]
        + ["variant", "train_index", "n_images"]
    )
    assert provenance["n_images"] == 6 and provenance["deterministic"] is cfg.deterministic
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


# --------------------------------------------------------------------------------------------------
# What train() actually uses: optimiser, batch size, epochs
# --------------------------------------------------------------------------------------------------

# The per-base defaults (hxpe/LEDGER.md): optimiser class, betas, batch size. Change together with
# hxpe/train.py (make_optimizer, BASE_BATCH_SIZE).
BASE_DEFAULTS = {
    "adaclip": (torch.optim.AdamW, (0.5, 0.999), 1),
    "anomalyclip": (torch.optim.Adam, (0.5, 0.999), 8),
}


@pytest.mark.parametrize("variant", ["adaclip", "anomalyclip"])
def test_train_uses_the_base_optimiser_batch_size_and_epochs(
    toy: DatasetIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    made: list[torch.optim.Optimizer] = []
    for name in ("Adam", "AdamW", "SGD"):
        real = getattr(torch.optim, name)
        spy = type(name, (real,), {"__init__": _recording_init(real, made)})
        monkeypatch.setattr(torch.optim, name, spy)
    cfg = profile(epochs=2, batch_size=None, lr=0.01)
    out = train(cfg, toy, phrases_for(toy), tmp_path / variant, variant)
    expected_cls, betas, batch = BASE_DEFAULTS[variant]
    assert len(made) == 1
    opt = made[0]
    assert type(opt).__mro__[1] is expected_cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and tuple(group["betas"]) == betas
    model = load_checkpoint(out)
    assert sum(p.numel() for p in group["params"]) == sum(
        p.numel() for p in model.trainable_state().values()
    )
    n_images = len(toy.split("test"))  # 6
    steps_per_epoch = -(-n_images // batch)
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["batch_size_resolved"] == batch
    assert config["steps"] == 2 * steps_per_epoch
    rows = pd.read_csv(out / "loss.csv")
    assert rows.groupby("epoch").size().tolist() == [steps_per_epoch] * 2


def _recording_init(real: type, made: list):
    def init(self, *args, **kwargs):
        real.__init__(self, *args, **kwargs)
        made.append(self)

    return init


def test_max_steps_stops_training_early(
    toy: DatasetIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import hxpe.atomic
    import hxpe.train as train_module

    staged: list[Path] = []
    monkeypatch.setattr(
        train_module,
        "replace_dir",
        lambda tmp, target, kind: (
            staged.append(tmp.parent) or hxpe.atomic.replace_dir(tmp, target, kind)
        ),
    )
    with caplog.at_level("INFO", logger="hxpe.train"):
        out = train(
            profile(epochs=5, max_steps=2), toy, phrases_for(toy), tmp_path / "a", "adaclip"
        )
    settings = json.loads((out / "config.json").read_text())["train"]
    assert (settings["steps"], settings["train_index"], settings["seed"]) == (2, "toy", 3)
    provenance = json.loads((out / "provenance.json").read_text())
    assert (provenance["variant"], provenance["train_index"], provenance["seed"]) == (
        "adaclip",
        "toy",
        3,
    )
    assert staged == [tmp_path]  # staged beside the target: the final rename stays atomic
    trained = [r.getMessage() for r in caplog.records if r.name == "hxpe.train"]
    assert any(
        m.startswith("Trained adaclip: 2 steps, final loss ") and m.endswith(f" -> {out}")
        for m in trained
    )


# --------------------------------------------------------------------------------------------------
# Training signatures: variants that would train the same parameters train once
# --------------------------------------------------------------------------------------------------


def variant_profile(**variants: dict) -> Config:
    cfg = profile(epochs=1)
    return cfg.model_copy(update={"variants": variants})


def test_training_signature_keeps_what_training_sees_and_drops_the_rest() -> None:
    off = {"explain": {"enabled": False}, "vfm": {"enabled": False}}
    cfg = variant_profile(
        base=off,
        sigma={**off, "sigma": 3.0},
        reweight={"explain": {"enabled": False}, "vfm": {"mode": "reweight", "alpha": 0.9}},
        noref_plain={**off, "reference_rule": "none"},
        attn={"explain": {"enabled": False}},
        attn_alpha={"explain": {"enabled": False}, "vfm": {"alpha": 0.1}},
        attn_beta={"explain": {"enabled": False}, "vfm": {"bias_beta": 2.0}},
        attn_noref={"explain": {"enabled": False}, "reference_rule": "none"},
        explain={"vfm": {"enabled": False}},
        explain_noref={"vfm": {"enabled": False}, "reference_rule": "none"},
        explain_template={"vfm": {"enabled": False}, "explain": {"fuse_template": "x {phrase}"}},
        explain_off_template={**off, "explain": {"enabled": False, "mode": "fuse"}},
    )
    sig = {v: training_signature(cfg, v) for v in cfg.variants}
    same_as_base = ["sigma", "reweight", "noref_plain", "explain_off_template"]
    assert all(sig[v] == sig["base"] for v in same_as_base), sig
    assert sig["attn_alpha"] == sig["attn"]
    for v in ("attn", "attn_beta", "attn_noref", "explain", "explain_noref"):
        assert sig[v] != sig["base"], v
    assert len({sig[v] for v in ("attn", "attn_beta", "attn_noref")}) == 3
    assert sig["explain_noref"] != sig["explain"]
    other_seed = cfg.model_copy(update={"seed": 4})
    assert training_signature(other_seed, "base") != sig["base"]
    groups = training_groups(cfg)
    assert groups[sig["base"]] == [
        "base",
        "sigma",
        "reweight",
        "noref_plain",
        "explain_off_template",
    ]


@pytest.mark.parametrize("name", ["paper", "demo"])
def test_profiles_train_no_duplicates(name: str) -> None:
    from hxpe.config import load_config

    cfg = load_config(f"notebooks/params/{name}.yaml")
    groups = training_groups(cfg)
    shared = {m: ms[0] for ms in groups.values() for m in ms[1:]}
    expected = {"hxpe_reweight": "adaclip_explain"}
    assert shared == expected
    trained = [ms[0] for ms in groups.values()]
    assert len(trained) == len(set(trained)) == len(trainable_variants(cfg)) - len(expected)
    assert training_signature(cfg, "adaclip") != training_signature(cfg, "adaclip_dinov2")
    assert training_signature(cfg, "anomalyclip") != training_signature(cfg, "anomalyclip_dinov2")
    assert cfg.model_for("hxpe").vfm.mode == "attn_bias"
    assert cfg.reference_rule_for("hxpe_noref") == "none"
    assert cfg.reference_rules() == ["first_normal_train", "none"]


def test_train_all_shares_checkpoints_of_equal_signatures(
    toy: DatasetIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hxpe.train as train_module

    off = {"explain": {"enabled": False}, "vfm": {"enabled": False}}
    cfg = variant_profile(
        adaclip={"base": "adaclip", **off},
        adaclip_dinov2={"base": "adaclip", "explain": {"enabled": False}},
        adaclip_rw={"base": "adaclip", "explain": {"enabled": False}, "vfm": {"mode": "reweight"}},
    )
    cfg = Config.model_validate(
        cfg.model_dump()
        | {"evaluation": {"directions": [{"name": "d", "train": "toy", "test": ["toy"]}]}}
    )
    calls: list[str] = []
    real_train = train_module.train
    monkeypatch.setattr(
        train_module, "train", lambda *a, **k: calls.append(a[4]) or real_train(*a, **k)
    )
    rd = tmp_path / "results"
    save_index(toy, rd / "index" / "toy")
    out = train_module.train_all(cfg, phrases_for(toy), results_dir=rd)
    assert calls == ["adaclip", "adaclip_dinov2"]
    assert set(out) == {("d", "adaclip"), ("d", "adaclip_dinov2"), ("d", "adaclip_rw")}
    w = {v: load_file(out[("d", v)] / "trainable.safetensors") for v in cfg.variants}
    assert all(torch.equal(w["adaclip"][k], w["adaclip_rw"][k]) for k in w["adaclip"])
    assert any(not torch.equal(w["adaclip"][k], w["adaclip_dinov2"][k]) for k in w["adaclip"])
    shared = json.loads((out[("d", "adaclip_rw")] / "config.json").read_text())
    assert shared["train"]["trained_as"] == "adaclip"
    assert shared["model"]["vfm"]["mode"] == "reweight" and shared["model"]["vfm"]["enabled"]
    model = model_for_evaluation(cfg, "d", "adaclip_rw", rd)
    assert model.cfg == cfg.model_for("adaclip_rw") and model.vfm is not None
    with pytest.raises(ValueError, match="Cannot share"):
        share_checkpoint(out[("d", "adaclip")], tmp_path / "x", cfg, "adaclip_dinov2")


def test_optimiser_choices_build_what_they_name() -> None:
    from hxpe.model.config import TrainConfig
    from hxpe.model.tiny import tiny_model_config
    from hxpe.train import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    model_cfg = tiny_model_config("anomalyclip")
    sgd = make_optimizer(params, TrainConfig(optimizer="sgd", lr=0.05), model_cfg)
    assert type(sgd) is torch.optim.SGD
    assert sgd.param_groups[0]["lr"] == 0.05 and sgd.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[0]["params"] == params
    adamw = make_optimizer(params, TrainConfig(optimizer="adamw", betas=(0.9, 0.99)), model_cfg)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["betas"] == (0.9, 0.99)


def test_share_checkpoint_cleans_up_and_keeps_the_original_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the staging folder was renamed into place (the old copy cannot be removed)
    propagates as it is; the clean-up of the vanished staging folder adds no error of its own."""
    import hxpe.train as train_module

    cfg = variant_profile(a={"explain": {"enabled": False}, "vfm": {"enabled": False}})
    source = tmp_path / "src"
    source.mkdir()
    train = {"variant": "a", "training_signature": training_signature(cfg, "a")}
    (source / "config.json").write_text(json.dumps({"train": train, "model": {}}))
    (source / "loss.csv").write_text("epoch,loss\n0,1.0\n")

    def rename_then_fail(staging: Path, target: Path, kind: object) -> None:
        staging.rename(target)
        raise OSError("cannot remove the old copy")

    monkeypatch.setattr(train_module, "replace_dir", rename_then_fail)
    target = tmp_path / "ckpt" / "b"
    with pytest.raises(OSError, match="cannot remove the old copy"):
        share_checkpoint(source, target, cfg, "a")
    assert sorted(p.name for p in target.parent.iterdir()) == ["b"]
    assert (target / "loss.csv").read_text() == "epoch,loss\n0,1.0\n"


def test_train_all_reads_each_rules_phrases_from_the_results_when_none_are_given(
    toy: DatasetIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hxpe.agent
    import hxpe.train as train_module

    off = {"explain": {"enabled": False}, "vfm": {"enabled": False}}
    cfg = variant_profile(
        ref={"base": "adaclip", **off},
        noref={"base": "anomalyclip", **off, "reference_rule": "none"},
    )
    cfg = Config.model_validate(
        cfg.model_dump()
        | {"evaluation": {"directions": [{"name": "d", "train": "toy", "test": ["toy"]}]}}
    )
    rd = tmp_path / "results"
    save_index(toy, rd / "index" / "toy")
    read: list[tuple[Path, str]] = []
    given: list[tuple[str, dict]] = []

    def fake_phrases(root: Path, rule: str) -> dict[str, str | None]:
        read.append((root, rule))
        return {"x": rule}

    monkeypatch.setattr(hxpe.agent, "phrases_for_rule", fake_phrases)
    monkeypatch.setattr(
        train_module, "train", lambda c, i, phrases, target, v, **k: given.append((v, phrases))
    )
    train_module.train_all(cfg, results_dir=rd)
    assert read == [(rd, "first_normal_train"), (rd, "none")]
    assert given == [("ref", {"x": "first_normal_train"}), ("noref", {"x": "none"})]


def test_loss_plot_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from hxpe.train import _write_loss

    figures: list[Figure] = []
    saved: list[dict] = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(
        Figure,
        "savefig",
        lambda fig, *a, **k: figures.append(fig) or saved.append(k) or real_savefig(fig, *a, **k),
    )
    rows = [
        {"epoch": 1, "step": s, "total": t, "focal": t / 2, "dice": t / 4, "image": t / 4}
        for s, t in ((1, 2.0), (2, 1.0))
    ]
    _write_loss(rows, tmp_path, "adaclip on toy")
    with open(tmp_path / "loss.csv") as fh:
        assert [float(r["total"]) for r in csv.DictReader(fh)] == [2.0, 1.0]
    (ax,) = figures[0].axes
    assert ax.get_title() == "adaclip on toy" and ax.title.get_fontsize() == 9
    assert [line.get_label() for line in ax.get_lines()] == ["total", "focal", "dice", "image"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "loss")
    assert tuple(figures[0].get_size_inches()) == (5.0, 3.0)
    assert ax.get_legend().get_texts()[0].get_fontsize() == 7
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2]
    assert list(ax.get_lines()[2].get_ydata()) == [0.5, 0.25]
    assert (tmp_path / "loss.png").stat().st_size > 0 and saved == [{"dpi": 120}]


def test_train_feeds_the_references_and_shows_the_loss(
    toy: DatasetIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """A variant with DINOv2 prompts trains on batches that carry each class's normal reference
    (``select_references``: the first normal training image), and the progress bar shows the
    running loss."""
    import hxpe.train as train_module

    seen: list[dict] = []
    bars: list[dict] = []
    real = train_module.step_losses
    real_tqdm = train_module.progress
    monkeypatch.setattr(
        train_module, "progress", lambda it, **kw: bars.append(kw) or real_tqdm(it, **kw)
    )
    monkeypatch.setattr(
        train_module,
        "step_losses",
        lambda model, batch, spec: seen.append(batch) or real(model, batch, spec),
    )
    cfg = profile(epochs=1, max_steps=1)
    train(cfg, toy, phrases_for(toy), tmp_path / "hxpe", "hxpe")
    (batch,) = seen
    ds = IndexDataset(toy, SIZE, "test", {}, {"widget": toy.split("train").iloc[0]["image_id"]})
    assert torch.equal(batch["reference"][0], ds[0]["reference"])
    assert batch["has_reference"].tolist() == [True, True]
    assert re.search(r"loss=\d+\.\d{4}\b", capfd.readouterr().err)
    assert bars == [{"desc": "hxpe epoch 1/1", "leave": False}]  # cleared when the epoch ends


def test_step_losses_passes_references_and_which_are_real(toy: DatasetIndex) -> None:
    """The losses of one batch are those of the model's forward with the batch's references,
    their ``has_reference`` flags and class names (a reference marked missing changes them)."""
    from hxpe.train import step_losses

    model = build_model(profile().model_for("hxpe")).eval()
    refs = {"widget": toy.split("train").iloc[0]["image_id"]}
    ds = IndexDataset(toy, SIZE, "test", phrases_for(toy), refs)
    batch = torch.utils.data.default_collate([ds[i] for i in (0, 3)])
    batch["has_reference"] = torch.tensor([True, False])
    spec = LossSpec.resolve(model.cfg, TrainConfig())
    phrases = [p or None for p in batch["phrase"]]

    def losses(**kw: object) -> torch.Tensor:
        with torch.no_grad(), model.same_rng_per_image():
            return hxpe_loss(
                model(batch["image"], phrases, **kw), batch["mask"], batch["label"], spec
            )["total"]

    with torch.no_grad(), model.same_rng_per_image():  # HSF k-means: the same draws per call
        got = step_losses(model, batch, spec)["total"]
    cls = [str(c) for c in batch["cls"]]
    expected = losses(
        references=batch["reference"], has_reference=batch["has_reference"], class_names=cls
    )
    assert torch.equal(got, expected)
    assert not torch.equal(got, losses(references=batch["reference"], class_names=cls))
    assert not torch.equal(got, losses(class_names=cls))


def test_interrupted_training_leaves_no_partial_checkpoint(
    toy: DatasetIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hxpe.train as train_module

    def fail(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", fail)
    out = tmp_path / "checkpoints" / "adaclip"
    with pytest.raises(KeyboardInterrupt):
        train(profile(epochs=1, max_steps=1), toy, phrases_for(toy), out, "adaclip")
    assert list(out.parent.iterdir()) == []  # neither the checkpoint nor its staging folder


def test_share_checkpoint_stages_beside_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The staging folder lives in the target's folder (same file system: an atomic rename), not
    in the system temporary folder, which here does not exist."""
    import tempfile

    cfg = variant_profile(a={"explain": {"enabled": False}, "vfm": {"enabled": False}})
    source = tmp_path / "src"
    source.mkdir()
    train_settings = {"variant": "a", "training_signature": training_signature(cfg, "a")}
    (source / "config.json").write_text(json.dumps({"train": train_settings, "model": {}}))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    target = tmp_path / "ckpt" / "b"
    with caplog.at_level("INFO", logger="hxpe.train"):
        assert share_checkpoint(source, target, cfg, "a") == target
    assert caplog.messages == [f"Variant a shares the checkpoint trained as src -> {target}"]
    text = (target / "config.json").read_text()
    assert json.loads(text)["train"]["trained_as"] == "a"
    assert text == json.dumps(json.loads(text), indent=1, sort_keys=True)
    assert [p.name for p in target.parent.iterdir()] == ["b"]


def test_checkpoint_config_and_the_evaluation_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``config.json`` is indented JSON; the evaluation model warns only when the profile's variant
    config differs from the checkpoint's (and then uses the checkpoint's); ``device`` moves it."""
    from hxpe.model.checkpoint import save_checkpoint
    from hxpe.results_layout import ResultsLayout

    cfg = profile()
    model = build_model(cfg.model_for("adaclip"))
    ckpt = ResultsLayout.at(tmp_path).checkpoint_dir("toy_dir", "adaclip")
    ckpt.mkdir(parents=True)
    save_checkpoint(model, ckpt, {"note": "untrained"})
    text = (ckpt / "config.json").read_text()
    assert text.startswith('{\n "model": {\n  "adaclip": {') and json.loads(text)["train"] == {
        "note": "untrained"
    }
    with caplog.at_level("WARNING", logger="hxpe.model.inference"):
        same = model_for_evaluation(cfg, "toy_dir", "adaclip", tmp_path)
    warned = [r.message for r in caplog.records if r.name == "hxpe.model.inference"]
    assert warned == [] and same.cfg == model.cfg and not same.training
    other = Config.model_validate(cfg.model_dump() | {"model": TINY_MODEL | {"sigma": 2.0}})
    with caplog.at_level("WARNING", logger="hxpe.model.inference"):
        used = model_for_evaluation(other, "toy_dir", "adaclip", tmp_path)
    assert [r.message for r in caplog.records if r.name == "hxpe.model.inference"] == [
        f"Checkpoint {ckpt} was trained with a model config that differs from the profile's "
        "variant 'adaclip'; using the checkpoint's."
    ]
    assert used.cfg.sigma == 1.0
    with caplog.at_level("INFO", logger="hxpe.model.checkpoint"):
        on_meta = load_checkpoint(ckpt, device="meta")
    n_tensors = len(model.trainable_state())
    assert caplog.records[-1].getMessage() == f"Loaded checkpoint {ckpt} ({n_tensors} tensors)"
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}


def test_training_loader_refuses_an_empty_split_and_takes_one_image(
    toy: DatasetIndex, tmp_path: Path
) -> None:
    from hxpe.train import _loader

    cfg = profile(split="validation")
    with pytest.raises(ValueError) as err:
        _loader(cfg, cfg.model_for("adaclip"), toy, phrases_for(toy), None)
    assert str(err.value) == (
        "Index toy has no 'validation' images to train on; check the index (stage 01) or "
        "train.split."
    )
    cfg = profile(split="train")  # the toy index has one training image
    assert len(_loader(cfg, cfg.model_for("adaclip"), toy, phrases_for(toy), None).dataset) == 1


def test_training_loader_uses_the_configured_workers_batch_and_seed(toy: DatasetIndex) -> None:
    from hxpe.train import _loader

    cfg = profile(num_workers=1, batch_size=3)
    loader = _loader(cfg, cfg.model_for("adaclip"), toy, phrases_for(toy), None)
    assert loader.num_workers == 1 and loader.batch_size == 3
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)  # shuffled, seeded
    assert loader.generator.initial_seed() == cfg.seed


def test_checkpoint_metadata_and_refusals(tmp_path: Path) -> None:
    """The weights file says its format; a checkpoint without weights, or with a tensor of another
    shape, is refused with a message that names the file and what to do."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hxpe.model.checkpoint import save_checkpoint

    model = build_model(profile().model_for("anomalyclip"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_checkpoint(model, ckpt, {})
    with safe_open(str(ckpt / "trainable.safetensors"), "pt") as fh:
        assert fh.metadata() == {"format": "hxpe-trainable-v1"}
    state = load_file(ckpt / "trainable.safetensors")
    state["prompter.ctx_normal"] = torch.zeros(3, 64)
    save_file(state, str(ckpt / "trainable.safetensors"))
    with pytest.raises(ValueError) as err:
        load_checkpoint(ckpt)
    assert str(err.value) == (
        f"Checkpoint {ckpt}: prompter.ctx_normal has shape (3, 64), the model expects (12, 64); "
        "retrain it."
    )
    del state["prompter.ctx_normal"]  # a tensor missing, none unexpected
    save_file(state, str(ckpt / "trainable.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['prompter\.ctx_normal'\], unexpected \[\]"):
        load_checkpoint(ckpt)
    (ckpt / "trainable.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_checkpoint(ckpt)
    assert str(err.value) == f"Checkpoint {ckpt} has no trainable.safetensors; retrain it."


def test_training_that_takes_no_step_saves_nothing_and_keeps_the_old_checkpoint(
    toy: DatasetIndex, tmp_path: Path
) -> None:
    """Issue 24: epochs 0 (refused at load, here forced past it) must not replace a trained
    checkpoint with an untrained one."""
    cfg = profile()
    object.__setattr__(cfg.train, "epochs", 0)  # what load_config refuses (tests/test_config.py)
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "trainable.safetensors").write_bytes(b"trained")
    (out / "config.json").write_text("{}")
    batches = -(-len(toy.split("test")) // 2)  # batch_size 2
    with pytest.raises(RuntimeError) as err:
        train(cfg, toy, phrases_for(toy), out, "adaclip")
    assert str(err.value) == (
        f"Training adaclip on {toy.name} took no step (train.epochs: 0, {batches} batches per "
        f"epoch), so "
        f"no checkpoint was written and {out} was left as it was; set train.epochs >= 1."
    )
    assert (out / "trainable.safetensors").read_bytes() == b"trained"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_training_refuses_a_checkpoint_folder_that_is_not_a_checkpoint(
    toy: DatasetIndex, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputRefused, match=r"checkpoint folder .*mine holds files that are not"):
        train(profile(), toy, phrases_for(toy), out, "adaclip")
    assert (out / "notes.txt").read_text() == "mine"


def test_the_loss_figure_leaves_the_matplotlib_backend_alone(tmp_path, monkeypatch):
    import matplotlib

    from hxpe.train import LOSS_COLUMNS, _write_loss

    switched = []
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: switched.append(a))
    rows = [dict.fromkeys(LOSS_COLUMNS, 1.0) | {"step": i} for i in range(3)]
    _write_loss(rows, tmp_path, "demo")
    assert switched == []
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_no_library_module_switches_the_matplotlib_backend():
    from hxpe.paths import repo_root

    offenders = [
        str(p.relative_to(repo_root()))
        for p in (repo_root() / "hxpe").rglob("*.py")
        if "matplotlib.use(" in p.read_text() or "switch_backend(" in p.read_text()
    ]
    assert offenders == [], f"{offenders} switch the backend: use a Figure object instead"
