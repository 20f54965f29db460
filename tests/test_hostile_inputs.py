"""Careless and hostile input to ``hxpe predict`` and the app (issue 24, part B): one clear line per
bad input, bounded memory on odd images, offline by default, no server-side paths, bounded caches."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

import hxpe.predict as predict_module
from hxpe.app import OutputFolders, analyse
from hxpe.cli import main, stay_offline
from hxpe.model.checkpoint import save_checkpoint
from hxpe.model.model import build_model
from hxpe.model.tiny import tiny_model_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "hxpe"
    out.mkdir()
    save_checkpoint(build_model(tiny_model_config("adaclip")), out, {"note": "untrained"})
    return out


@pytest.fixture(scope="module")
def part(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "part.png"
    Image.new("RGB", (64, 48), (90, 120, 150)).save(path)
    return path


def _broken_checkpoint(checkpoint: Path, where: Path, edit: Callable[[Path], None]) -> Path:
    target = where / "broken"
    shutil.copytree(checkpoint, target)
    edit(target)
    return target


def _model_config(checkpoint: Path, **clip: object) -> str:
    config = json.loads((checkpoint / "config.json").read_text())
    config["model"]["clip"].update(clip)
    return json.dumps(config)


# Each case: (name, build(tmp, checkpoint, part) -> (argv after "predict", input named), fix words)
CASES: dict[str, tuple[Callable[..., tuple[list[str], str]], str]] = {}


def case(name: str, fix: str):  # type: ignore[no-untyped-def]
    def register(build):  # type: ignore[no-untyped-def]
        CASES[name] = (build, fix)
        return build

    return register


@case("1x1 image", "Use a larger image")
def _one_pixel(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp / "dot.png")
    return [str(tmp / "dot.png"), "--checkpoint", str(ckpt)], "dot.png is 1×1 pixels"


@case("zero-byte safetensors", "truncated or corrupt")
def _zero_weights(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    broken = _broken_checkpoint(ckpt, tmp, lambda d: (d / "trainable.safetensors").write_bytes(b""))
    return [str(part), "--checkpoint", str(broken)], f"{broken}/trainable.safetensors"


@case("truncated safetensors", "Copy it again, or retrain or re-import")
def _cut_weights(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    def cut(d: Path) -> None:
        data = (d / "trainable.safetensors").read_bytes()
        (d / "trainable.safetensors").write_bytes(data[: len(data) // 2])

    broken = _broken_checkpoint(ckpt, tmp, cut)
    return [str(part), "--checkpoint", str(broken)], f"{broken}/trainable.safetensors"


@case("config.json not JSON", "retrain or re-import the checkpoint")
def _config_not_json(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    broken = _broken_checkpoint(ckpt, tmp, lambda d: (d / "config.json").write_text("{model: 1"))
    return [str(part), "--checkpoint", str(broken)], f"{broken}/config.json is not valid JSON"


@case("config.json a list", "retrain or re-import the checkpoint")
def _config_list(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    broken = _broken_checkpoint(ckpt, tmp, lambda d: (d / "config.json").write_text("[1, 2]"))
    return [str(part), "--checkpoint", str(broken)], f"{broken}/config.json holds a JSON list"


@case("config.json without model", "not written by this code's trainer or importer")
def _config_no_model(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    edit = lambda d: (d / "config.json").write_text('{"train": {}}')  # noqa: E731
    broken = _broken_checkpoint(ckpt, tmp, edit)
    return [str(part), "--checkpoint", str(broken)], f"{broken}/config.json has no 'model' object"


@case("unpinned pretrained tag", "To pin it, add an entry")
def _unpinned(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    text = _model_config(ckpt, pretrained="laion2b_s34b_b79k")
    broken = _broken_checkpoint(ckpt, tmp, lambda d: (d / "config.json").write_text(text))
    return [str(part), "--checkpoint", str(broken)], "'laion2b_s34b_b79k' for 'hxpe-tiny-clip'"


@case("params YAML malformed", "Fix that line")
def _yaml_bad(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    (tmp / "bad.yaml").write_text("profile: demo\n  model: [\n")
    argv = [str(part), "--checkpoint", str(ckpt), "--params", str(tmp / "bad.yaml")]
    return argv, f"{tmp / 'bad.yaml'} is not valid YAML at line 2"


@case("params YAML with a tag", "Remove the tag")
def _yaml_tag(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    (tmp / "tag.yaml").write_text('profile: !!python/object/apply:os.system ["true"]\n')
    argv = [str(part), "--checkpoint", str(ckpt), "--params", str(tmp / "tag.yaml")]
    return argv, f"{tmp / 'tag.yaml'} uses a YAML tag at line 1"


@case("--image-size 0", "leave it out to use the checkpoint's own input size")
def _size_zero(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    return [str(part), "--checkpoint", str(ckpt), "--image-size", "0"], "--image-size 0:"


@case("--image-size -5", "between 16 and 2048 pixels")
def _size_negative(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    return [str(part), "--checkpoint", str(ckpt), "--image-size", "-5"], "--image-size -5:"


@case("symlink loop", "point it at a real file")
def _loop(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    os.symlink(tmp / "loop.png", tmp / "loop.png")
    return [str(tmp / "loop.png"), "--checkpoint", str(ckpt)], f"{tmp / 'loop.png'} is a symbolic"


@case("same stem twice", "pass another --out DIR, or rename the image")
def _same_stem(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    Image.new("RGB", (64, 48), (10, 10, 10)).save(tmp / "a" / "part.png")
    Image.new("RGB", (64, 48), (250, 250, 250)).save(tmp / "b" / "part.png")
    first = ["predict", str(tmp / "a" / "part.png"), "--checkpoint", str(ckpt)]
    assert main([*first, "--out", str(tmp / "out")]) == 0
    assert main([*first, "--out", str(tmp / "out")]) == 0  # the same image again: overwritten
    argv = [str(tmp / "b" / "part.png"), "--checkpoint", str(ckpt)]
    return argv, f"{tmp / 'b' / 'part.png'}: {tmp / 'out' / 'part_prediction.json'} already holds"


@case("49-megapixel PNG", "Downscale it first")
def _huge(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    Image.new("1", (7000, 7000)).save(tmp / "huge.png")  # ~10 KB on disk
    return [str(tmp / "huge.png"), "--checkpoint", str(ckpt)], "the limit is 40,000,000 pixels"


@case("--out is a file (OSError)", "you may read and write it")
def _out_file(tmp: Path, ckpt: Path, part: Path) -> tuple[list[str], str]:
    (tmp / "taken").write_text("a user's file")
    return [str(part), "--checkpoint", str(ckpt), "--out", str(tmp / "taken")], "File exists"


def _raiser(err: BaseException) -> Callable[..., None]:
    def raise_it(*args: object, **kwargs: object) -> None:
        raise err

    return raise_it


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_input_gets_one_line_naming_it_and_the_fix(
    name, checkpoint, part, tmp_path, caplog, capsys
):
    build, fix = CASES[name]
    argv, named = build(tmp_path, checkpoint, part)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["predict", *argv]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    (line,) = errors
    assert "\n" not in line and named in line and fix in line, line
    assert "Traceback" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "err, expected",
    [
        (MemoryError(), "hxpe predict ran out of memory. Use a smaller image (--max-pixels)"),
        (
            RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore"),
            "hxpe predict failed: CUDA out of memory. Tried to allocate 2 GiB. If this is out of",
        ),
        (
            PermissionError(13, "Permission denied", "/data/part.png"),
            "Permission denied: /data/part.png. Check that the path exists and that you may",
        ),
    ],
)
def test_memory_runtime_and_os_errors_are_mapped(err, expected, part, monkeypatch, caplog):
    monkeypatch.setattr(predict_module, "predict", _raiser(err))
    with caplog.at_level(logging.ERROR):
        assert main(["predict", str(part)]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith(expected), line


def test_a_bug_still_shows_its_traceback(part, monkeypatch):
    monkeypatch.setattr(predict_module, "predict", _raiser(ZeroDivisionError("bug")))
    with pytest.raises(ZeroDivisionError):
        main(["predict", str(part)])


@pytest.mark.parametrize(
    "name",
    ["1x1 image", "zero-byte safetensors", "config.json a list", "symlink loop", "--image-size 0"],
)
def test_the_app_shows_the_same_message(name, checkpoint, part, tmp_path, caplog):
    build, fix = CASES[name]
    argv, named = build(tmp_path, checkpoint, part)
    with caplog.at_level(logging.ERROR):
        assert main(["predict", *argv, "--out", str(tmp_path / "cli")]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    ckpt = argv[argv.index("--checkpoint") + 1]
    if name == "--image-size 0":  # the app has no such option: predict's own argument
        with pytest.raises(ValueError, match="image_size 0: the model input side must be"):
            predict_module.predict(part, checkpoint=ckpt, image_size=0)
        return
    page = analyse(argv[0], checkpoint=ckpt, out_dir=tmp_path / "app")
    assert page.status.endswith(f":** {line}"), page.status
    assert page.overlay is None


def test_commands_stay_offline_but_fetch_models(monkeypatch, part):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    stay_offline(["fetch-models", "dinov2"])
    assert "HF_HUB_OFFLINE" not in os.environ
    assert main(["predict", str(part.with_name("absent.png"))]) == 2
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a user's explicit choice is kept
    stay_offline(["predict"])
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_a_very_tall_image_stays_under_2_gb(checkpoint, tmp_path):
    """A 20×10000 PNG made predict peak at 13.7 GB (a 264-megapixel figure); measured in a fresh
    process: its peak resident memory, and an overlay of ordinary size."""
    Image.new("RGB", (20, 10000), (120, 60, 30)).save(tmp_path / "tall.png")
    script = (
        "import resource, sys\n"
        "from hxpe.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(rc)\n"
    )
    argv = ["predict", str(tmp_path / "tall.png"), "--checkpoint", str(checkpoint)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, *argv, "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    peak_kb = int(done.stdout.split("PEAK_KB")[1].split()[0])
    assert peak_kb < 2 * 1024 * 1024, f"peak {peak_kb / 1024:.0f} MiB"
    with Image.open(tmp_path / "out" / "tall_overlay.png") as overlay:
        assert max(overlay.size) < 2500 and min(overlay.size) > 300, overlay.size


def test_figures_draw_a_downscaled_copy_with_a_clamped_aspect():
    from hxpe.figures.prediction import DISPLAY_SIDE, display_size, figure_aspect

    assert display_size(Image.new("RGB", (20, 10000))) == (4, DISPLAY_SIDE)
    assert display_size(Image.new("RGB", (12000, 3000))) == (DISPLAY_SIDE, 512)
    assert display_size(Image.new("RGB", (150, 100))) == (150, 100)  # never upscaled
    assert display_size(Image.new("RGB", (1, 5000))) == (1, DISPLAY_SIDE)  # at least one pixel
    assert figure_aspect(10000, 20) == 3.0 and figure_aspect(20, 10000) == pytest.approx(1 / 3)
    assert figure_aspect(100, 150) == pytest.approx(2 / 3)


def test_the_record_holds_no_server_side_path(checkpoint, part, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = analyse(part, checkpoint=checkpoint, out_dir=tmp_path / "out")
    record = json.loads(page.record.read_text())
    assert record["image"] == "part.png" and record["reference"] is None
    assert (
        record["provenance"]["checkpoint"] == "ckpt0/hxpe"
    )  # relative to the results root's parent
    assert record["provenance"]["params"] == "notebooks/params/demo.yaml"
    flat = json.dumps(record)
    assert str(tmp_path) not in flat and str(checkpoint) not in flat
    inside = tmp_path / "mine" / "part.png"
    inside.parent.mkdir()
    shutil.copy(part, inside)
    assert predict_module.portable_path(inside) == "mine/part.png"  # under the working directory


def test_the_model_cache_keeps_the_most_recently_used():
    cache = predict_module.ModelCache(size=2)
    loads: list[str] = []

    def loader(name: str):  # type: ignore[no-untyped-def]
        return lambda: loads.append(name) or name

    assert cache.get(("a", 0.0), loader("a")) == "a"
    cache.get(("b", 0.0), loader("b"))
    cache.get(("a", 0.0), loader("a"))  # held: not loaded again, now the most recent
    cache.get(("c", 0.0), loader("c"))  # evicts b, the least recently used
    assert loads == ["a", "b", "c"]
    assert cache.keys() == [("a", 0.0), ("c", 0.0)]
    assert predict_module.MODELS.size == predict_module.MODEL_CACHE_SIZE == 2


def test_request_folders_are_bounded_and_removed(tmp_path):
    folders = OutputFolders(keep=2, parent=tmp_path)
    made = [folders.new() for _ in range(3)]
    assert folders.root.name.startswith("hxpe-app-") and folders.root.parent == tmp_path
    assert [p.is_dir() for p in made] == [False, True, True]
    folders.close()
    assert list(tmp_path.iterdir()) == []


def test_the_server_removes_its_folders_when_stopped(monkeypatch, tmp_path):
    import hxpe.app as app_module

    seen: list[OutputFolders] = []

    class Stopped:
        def queue(self):  # type: ignore[no-untyped-def]
            return self

        def launch(self, **kwargs):  # type: ignore[no-untyped-def]
            seen[0].new()
            raise KeyboardInterrupt  # Ctrl-C, or SIGTERM through app._stop

    def fake_build(params, max_pixels, folders):  # type: ignore[no-untyped-def]
        seen.append(folders)
        return Stopped()

    monkeypatch.setattr(app_module, "build_app", fake_build)
    with pytest.raises(KeyboardInterrupt):
        app_module.serve()
    assert not seen[0].root.exists()
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        app_module._stop(15, None)
