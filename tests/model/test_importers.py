"""The importers of the authors' checkpoints (:mod:`hxpe.model.importers`) on tiny checkpoints
written in the authors' formats: renaming, inferred prompt shapes, refusals with their messages, the
files written, the command line, and the released-checkpoint path of the evaluation."""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import pytest
import torch

from hxpe.cli import main
from hxpe.hashing import file_sha256
from hxpe.model.checkpoint import load_checkpoint
from hxpe.model.config import ModelConfig
from hxpe.model.importers import (
    CheckpointRefused,
    authors_name,
    authors_state,
    convert,
    import_checkpoint,
    our_name,
    read_tensors,
    to_authors_layout,
)
from hxpe.model.model import build_model
from hxpe.model.tiny import tiny_model_config


def _authors_checkpoint(kind: str, path: Path, shift: float = 0.01) -> dict[str, torch.Tensor]:
    """A tiny model's parameters (moved by ``shift``) saved in the authors' format."""
    built = build_model(tiny_model_config(kind, explain={"enabled": False}, vfm={"enabled": False}))
    state = {
        authors_name(kind, n): to_authors_layout(kind, n, p.detach() + shift)
        for n, p in built.trainable_state().items()
    }
    torch.save({"prompt_learner": state} if kind == "anomalyclip" else state, path)
    return state


@pytest.mark.parametrize("kind", ["anomalyclip", "adaclip"])
def test_import_round_trips_a_tiny_authors_checkpoint(kind: str, tmp_path: Path) -> None:
    state = _authors_checkpoint(kind, tmp_path / "ckpt.pth")
    cfg = tiny_model_config(kind, explain={"enabled": False}, vfm={"enabled": False})
    out = import_checkpoint(kind, tmp_path / "ckpt.pth", tmp_path / "ours", cfg)
    model = load_checkpoint(out)
    for name, value in model.trainable_state().items():
        assert torch.equal(
            to_authors_layout(kind, name, value.detach()), state[authors_name(kind, name)]
        )
    for name in model.trainable_state():
        assert our_name(kind, authors_name(kind, name)) == name


class _NotATensor:
    pass


def test_a_pickled_object_is_refused_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"clip_model.x": _NotATensor()}, fh)
    with pytest.raises(CheckpointRefused, match="refused, not a tensors-only checkpoint"):
        read_tensors(path)
    with caplog.at_level(logging.ERROR):
        status = main(["import-checkpoint", "adaclip", str(path), "--out", str(tmp_path / "o")])
    assert status == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage()
    assert "refused" in errors[0].getMessage() and errors[0].exc_info is None
    assert not (tmp_path / "o").exists()


def test_wrong_layouts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.pth"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointRefused, match=f"^{re.escape(str(path))}: not an AnomalyCLIP"):
        import_checkpoint("anomalyclip", path, tmp_path / "o")
    with pytest.raises(CheckpointRefused, match=f"^{re.escape(str(path))}: not an AdaCLIP"):
        import_checkpoint("adaclip", path, tmp_path / "o")


class _OpensAFile:
    """Unpickling this object with the full pickle machinery would create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_a_torch_file_with_code_in_it_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"clip_model.x": _OpensAFile(marker)}, path)
    with pytest.raises(CheckpointRefused, match="refused, not a tensors-only checkpoint"):
        read_tensors(path)
    assert not marker.exists()


def test_a_failed_import_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    import hxpe.model.importers as importers

    _authors_checkpoint("anomalyclip", tmp_path / "ckpt.pth")

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(importers, "save_file", disk_full)
    out = tmp_path / "checkpoints" / "ours"
    with pytest.raises(OSError, match="No space left on device"):
        import_checkpoint("anomalyclip", tmp_path / "ckpt.pth", out)
    assert list(out.parent.iterdir()) == []


def test_released_variant_evaluates_the_imported_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from hxpe.config import Config
    from hxpe.model.inference import model_for_evaluation
    from hxpe.model.tiny import TINY_MODEL
    from hxpe.train import trainable_variants

    monkeypatch.setenv("HXPE_RELEASED_DIR", str(tmp_path / "released"))
    cfg = Config.model_validate(
        {
            "profile": "t",
            "model": TINY_MODEL,
            "evaluation": {"directions": [{"name": "d", "train": "mvtec", "test": ["x"]}]},
            "variants": {
                "released_adaclip": {
                    "base": "adaclip",
                    "checkpoint": "released_adaclip",
                    "explain": {"enabled": False},
                    "vfm": {"enabled": False},
                }
            },
        }
    )
    assert trainable_variants(cfg) == []
    with pytest.raises(FileNotFoundError, match="make fetch-models MODELS=released_adaclip"):
        model_for_evaluation(cfg, "d", "released_adaclip", tmp_path / "results")
    source = tmp_path / "released" / "released_adaclip" / "mvtec.pth"
    source.parent.mkdir(parents=True)
    state = _authors_checkpoint("adaclip", source)
    model = model_for_evaluation(cfg, "d", "released_adaclip", tmp_path / "results")
    for name, value in model.trainable_state().items():
        assert torch.equal(value.detach(), state[authors_name("adaclip", name)])
    provenance = tmp_path / "results" / "checkpoints" / "d" / "released_adaclip" / "provenance.json"
    assert json.loads(provenance.read_text())["source_sha256"] == file_sha256(source)

    import hxpe.model.importers as importers

    imports: list[Path] = []
    real = importers.import_checkpoint
    monkeypatch.setattr(
        importers, "import_checkpoint", lambda k, src, *a: imports.append(src) or real(k, src, *a)
    )
    model_for_evaluation(cfg, "d", "released_adaclip", tmp_path / "results")
    assert imports == []  # the same file: imported once
    _authors_checkpoint("adaclip", source, shift=0.02)  # a new file: imported again
    model = model_for_evaluation(cfg, "d", "released_adaclip", tmp_path / "results")
    assert imports == [source]
    assert json.loads(provenance.read_text())["source_sha256"] == file_sha256(source)


def test_non_tensor_entries_are_refused_naming_the_first_three(tmp_path: Path) -> None:
    obj = {"clip_model.a": 1, "clip_model.b": "x", "clip_model.c": None, "clip_model.d": 2.0}
    with pytest.raises(CheckpointRefused) as err:
        authors_state("adaclip", obj, tmp_path / "c.pth")
    assert str(err.value) == (
        f"{tmp_path / 'c.pth'}: entries that are not tensors: "
        "['clip_model.a', 'clip_model.b', 'clip_model.c']."
    )


def test_anomalyclip_shapes_are_read_off_the_file() -> None:
    """n_ctx from the contexts, the deep-prompt length and depth (+1: block 0 has none) from
    ``compound_prompts_text``; a file without deep prompts has length 0 and depth 1."""
    ctx = torch.zeros(1, 1, 5, 8)
    deep = {f"compound_prompts_text.{i}": torch.zeros(3, 8) for i in range(2)}
    with_deep = convert("anomalyclip", {"ctx_pos": ctx, "ctx_neg": ctx, **deep})
    assert with_deep.overrides == {
        "anomalyclip": {
            "n_ctx": 5,
            "text_prompt_length": 3,
            "text_prompt_depth": 3,
            "text_layout": "overwrite",
        }
    }
    assert with_deep.state["prompter.ctx_normal"].shape == (5, 8)
    bare = convert("anomalyclip", {"ctx_pos": ctx, "ctx_neg": ctx})
    assert bare.overrides == {
        "anomalyclip": {
            "n_ctx": 5,
            "text_prompt_length": 0,
            "text_prompt_depth": 1,
            "text_layout": "overwrite",
        }
    }
    with pytest.raises(CheckpointRefused, match=r"^AnomalyCLIP checkpoint without ctx_neg\.$"):
        convert("anomalyclip", {"ctx_pos": ctx})


@pytest.mark.parametrize("types", [["static"], ["dynamic"], ["static", "dynamic"]])
def test_adaclip_prompt_shapes_types_and_branches_are_read_off_the_file(
    types: list[str], tmp_path: Path
) -> None:
    """Static prompts give the depth (one tensor per block) and the length; dynamic-only prompts
    give the length (one head per token) but not the depth, which stays the given config's."""
    cfg = tiny_model_config(
        "adaclip",
        adaclip={"prompt_types": types, "prompt_depth": 3, "prompt_length": 2},
        explain={"enabled": False},
        vfm={"enabled": False},
    )
    built = build_model(cfg)
    state = {authors_name("adaclip", n): p.detach() for n, p in built.trainable_state().items()}
    got = convert("adaclip", state).overrides
    expected = {
        "prompt_types": types,
        "branches": ["vision", "language"],
        "patch_head": "raw_tokens",
        "text_layout": "overwrite",
        "prompt_length": 2,
    }
    if "static" in types:
        expected["prompt_depth"] = 3
    assert got == {"adaclip": expected, "n_layers": 4}
    torch.save(state, tmp_path / "c.pth")
    other = cfg.model_copy(
        update={"adaclip": cfg.adaclip.model_copy(update={"prompt_depth": 1, "prompt_length": 5})}
    )
    model = load_checkpoint(import_checkpoint("adaclip", tmp_path / "c.pth", tmp_path / "o", other))
    depth = 3 if "static" in types else 1
    assert (model.cfg.adaclip.prompt_depth, model.cfg.adaclip.prompt_length) == (depth, 2)


def test_import_with_the_base_defaults_writes_config_provenance_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a model config: the base's defaults with the phrase and the DINOv2 prompts off;
    ``config.json`` and ``provenance.json`` are indented JSON naming the source; the command line
    says what it wrote."""
    import tempfile

    source = tmp_path / "ckpt.pth"
    _authors_checkpoint("anomalyclip", source)
    out = tmp_path / "ours"
    # staged beside the target (one file system: an atomic rename), never in the system temp dir
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    assert main(["import-checkpoint", "anomalyclip", str(source), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"Imported anomalyclip checkpoint {source} -> {out}\n"
    config_text = (out / "config.json").read_text()
    config = json.loads(config_text)
    expected = ModelConfig(base="anomalyclip").model_dump(mode="json")
    expected["explain"]["enabled"] = expected["vfm"]["enabled"] = False
    expected["anomalyclip"] |= {"text_prompt_depth": 2, "text_prompt_length": 4}
    assert config == {"model": expected, "train": {"imported": "anomalyclip"}}
    assert config_text == json.dumps(config, indent=1, sort_keys=True)
    provenance_text = (out / "provenance.json").read_text()
    provenance = json.loads(provenance_text)
    assert provenance_text == json.dumps(provenance, indent=1, sort_keys=True)
    assert provenance["imported_from"] == str(source)
    assert provenance["authors_code"] == "zqhang/AnomalyCLIP@45ed4dd"


def test_import_command_help_names_the_safe_loader(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["import-checkpoint", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "The authors' .pth file (read with torch.load(weights_only=True))." in text
    assert "Whose checkpoint format." in text
    assert "Checkpoint directory to write: new, empty, or a previous checkpoint (replaced)." in text
    assert "--force Replace --out even when it holds files that are not a checkpoint." in text
    assert "Profile params file whose model settings to use." in text


def test_an_unknown_key_is_refused_by_name() -> None:
    with pytest.raises(CheckpointRefused) as err:
        convert("adaclip", {"clip_model.something_else": torch.zeros(1)})
    assert str(err.value) == (
        "unknown adaclip checkpoint key 'clip_model.something_else'; cannot import it."
    )


def test_language_only_static_prompts_give_the_length() -> None:
    """Without visual prompts the length comes from the text prompts (block 1: the authors' block 0
    text prompt is never read)."""
    state = {f"clip_model.text_prompter.static_prompts.{i}": torch.zeros(3, 8) for i in range(3)}
    got = convert("adaclip", state)
    assert got.overrides["adaclip"]["prompt_length"] == 3
    assert got.overrides["adaclip"]["branches"] == ["language"]
    assert got.ignored == ["clip_model.text_prompter.static_prompts.0"]
