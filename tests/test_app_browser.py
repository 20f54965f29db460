"""The app in a real browser: `hxpe app` served on a free local port, driven by Playwright in headless
Chromium. A tiny random-init checkpoint is written where the demo's would be, so the page's default
checkpoint is used and no `make demo` is needed. Screenshots go to build/app-shots/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")

from hxpe.data.config import DemoDataConfig  # noqa: E402
from hxpe.data.demo import generate_demo_dataset  # noqa: E402
from hxpe.model.checkpoint import save_checkpoint  # noqa: E402
from hxpe.model.model import build_model  # noqa: E402
from hxpe.model.tiny import tiny_model_config  # noqa: E402

from support.browser import browser_page, free_port, require_browser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "build" / "app-shots"
START_TIMEOUT_S = 180
RESULT_TIMEOUT_MS = 180_000


def write_demo_checkpoint(results_root: Path) -> Path:
    """A tiny random-init checkpoint where the demo profile's default checkpoint lives."""
    ckpt = results_root / "demo" / "checkpoints" / "aux_to_target" / "hxpe"
    ckpt.mkdir(parents=True)
    save_checkpoint(build_model(tiny_model_config("adaclip")), ckpt, {"note": "untrained"})
    return ckpt


def demo_pair(out: Path) -> tuple[Path, Path]:
    """A scratched demo bracket and a normal bracket of the same class (the reference)."""
    cfg = DemoDataConfig(
        target_classes=["bracket"], n_train_good=1, n_test_good=1, n_test_per_defect=1
    )
    root = generate_demo_dataset(out / "demo_target", "target", cfg)
    image, reference = out / "bracket_scratch.png", out / "bracket_good.png"
    shutil.copy(root / "bracket" / "test" / "scratch" / "000.png", image)
    shutil.copy(root / "bracket" / "train" / "good" / "000.png", reference)
    return image, reference


def _wait_until_serving(url: str, proc: subprocess.Popen, log: Path) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < START_TIMEOUT_S:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the app did not answer on {url} within {START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[dict]:
    """`hxpe app` on a free port with the tiny checkpoint as its default; the demo image pair."""
    require_browser()
    root = tmp_path_factory.mktemp("app")
    write_demo_checkpoint(root / "results")
    image, reference = demo_pair(root)
    port = free_port()
    (root / "tmp").mkdir()
    env = os.environ | {
        "HXPE_RESULTS_ROOT": str(root / "results"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TMPDIR": str(root / "tmp"),  # where the app's hxpe-app-* request folders go
    }
    log = root / "server.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hxpe.cli", "app", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        start_s = _wait_until_serving(url, proc, log)
        print(f"\napp served in {start_s:.1f} s on {url}")
        yield {"url": url, "image": image, "reference": reference, "root": root, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    left = sorted(p.name for p in (root / "tmp").glob("hxpe-app-*"))
    assert not left, f"the stopped app left its request folders behind: {left}"


def _upload(page, elem_id: str, path: Path) -> None:
    """Put ``path`` in the file box ``elem_id`` and wait until the box lists it (stem and suffix are
    shown in separate elements)."""
    from playwright.sync_api import expect

    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    expect(page.locator(f"#{elem_id}")).to_contain_text(path.stem, timeout=60_000)


def test_upload_image_and_reference_shows_map_and_phrase(served, monkeypatch, tmp_path):
    from playwright.sync_api import expect

    from hxpe.app import analyse

    monkeypatch.setenv("HXPE_RESULTS_ROOT", str(served["root"] / "results"))
    expected = analyse(served["image"], served["reference"], agent="classical", out_dir=tmp_path)
    assert expected.phrase and not expected.phrase.startswith("(none")  # the scratch is described
    started = time.perf_counter()
    with browser_page() as page:
        page.goto(served["url"])
        _upload(page, "image", served["image"])
        _upload(page, "reference", served["reference"])
        expect(page.locator("#agent input")).to_have_value("classical")
        page.locator("#run").click()
        phrase = page.locator("#phrase textarea")
        expect(phrase).to_have_value(expected.phrase, timeout=RESULT_TIMEOUT_MS)
        expect(page.locator("#score textarea")).to_have_value(expected.score)
        expect(page.locator("#verdict textarea")).to_have_value("anomalous")
        expect(page.locator("#described textarea")).to_have_value(expected.description)
        for elem_id in ("overlay", "prompt", "words"):
            picture = page.locator(f"#{elem_id} img")
            expect(picture).to_be_visible()
            assert picture.evaluate("img => img.naturalWidth") > 200, elem_id
        link = page.locator("#record a").first
        href = link.get_attribute("href")
        assert href and href.endswith("/bracket_scratch_prediction.json"), href
        record = page.request.get(href).json()  # the download the page offers
        assert record["phrase"] == expected.phrase and record["verdict"] is True
        assert f"{record['image_score']:.4f}" == expected.score
        assert [w["word"] for w in record["word_importance"]] == expected.phrase.split()
        expect(page.locator("#status")).to_contain_text("Done in")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "app_result.png"), full_page=True)
    print(f"browser round trip {time.perf_counter() - started:.1f} s")


def test_a_text_file_named_png_is_refused_with_a_message(served, tmp_path):
    from playwright.sync_api import expect

    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file, not a picture\n")
    with browser_page() as page:
        page.goto(served["url"])
        _upload(page, "image", fake)
        page.locator("#run").click()
        status = page.locator("#status")
        expect(status).to_contain_text("Not an image", timeout=RESULT_TIMEOUT_MS)
        expect(status).to_contain_text(re.compile(r"notes\.png is not an image Pillow can read"))
        expect(page.locator("#phrase textarea")).to_have_value("")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "app_not_an_image.png"), full_page=True)
