"""Stage atomicity, provenance and `hxpe verify`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from hxpe.config import load_config
from hxpe.hashing import file_sha256
from hxpe.paths import repo_root
from hxpe.pipeline import STAGES, execute_notebook_atomic
from hxpe.provenance import record_stage, utc_now
from hxpe.verify import verify_results

DEMO = repo_root() / "notebooks" / "params" / "demo.yaml"


def _notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("marker = ''\nsleep = 0.0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(textwrap.dedent(body))]
    nb.metadata["kernelspec"] = {"name": "hxpe", "display_name": "hxpe", "language": "python"}
    nbformat.write(nb, path)
    return path


BODY = """
import time
from pathlib import Path
Path(marker).write_text("started")
time.sleep(sleep)
Path(marker).write_text("done")
"""


def test_every_stage_has_its_notebook():
    for stage in STAGES.values():
        assert stage.source.is_file(), stage.source
        nb = nbformat.read(stage.source, as_version=4)
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        assert any("parameters" in t for t in tags), f"{stage.notebook} has no parameters cell"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
            f"{stage.notebook} is committed with outputs"
        )


def test_failed_notebook_leaves_no_target(tmp_path):
    src = _notebook(tmp_path / "nb.ipynb", "raise RuntimeError('boom')")
    target = tmp_path / "out" / "nb.ipynb"
    with pytest.raises(Exception, match="boom"):
        execute_notebook_atomic(src, target, {}, log_output=False)
    assert not target.exists()
    assert (tmp_path / "out" / "nb.failed.ipynb").exists()


def test_killed_stage_leaves_no_target_and_rerun_completes(tmp_path):
    src = _notebook(tmp_path / "nb.ipynb", BODY)
    target = tmp_path / "out" / "nb.ipynb"
    marker = tmp_path / "marker.txt"
    code = (
        "import sys; from pathlib import Path; from hxpe.pipeline import execute_notebook_atomic;"
        "execute_notebook_atomic(Path(sys.argv[1]), Path(sys.argv[2]),"
        " {'marker': sys.argv[3], 'sleep': float(sys.argv[4])}, log_output=False)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(src), str(target), str(marker), "60"],
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert marker.read_text() == "started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists(), "a killed stage must not leave its output in place"
    # rerun: completes and puts the executed notebook in place
    execute_notebook_atomic(src, target, {"marker": str(marker), "sleep": 0.0}, log_output=False)
    assert target.exists() and marker.read_text() == "done"
    executed = nbformat.read(target, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def _fake_run(results: Path) -> None:
    (results / "tables").mkdir(parents=True)
    (results / "tables" / "summary.md").write_text("| a |\n|---|\n| 1 |\n")
    (results / "figures").mkdir()
    (results / "figures" / "bars.png").write_bytes(b"\x89PNG fake")
    now = utc_now()
    record_stage(
        results,
        "evaluate",
        params_file=DEMO,
        started=now,
        finished=now,
        outputs=[results / "tables", results / "figures"],
    )


def test_manifest_records_hashes_and_environment():
    results = load_config(DEMO).results_dir
    _fake_run(results)
    manifest = json.loads((results / "provenance.json").read_text())
    art = manifest["stages"]["evaluate"]["artifacts"]
    assert art["tables/summary.md"] == file_sha256(results / "tables" / "summary.md")
    assert manifest["params_sha256"] == file_sha256(DEMO)
    assert manifest["packages"]["torch"]
    assert {"commit", "dirty"} <= set(manifest["stages"]["evaluate"]["git"])
    assert manifest["hardware"]["cpu_count"] >= 1
    assert "clip (random init)" in manifest["models"]  # the demo says its models are random
    assert manifest["agent_models"]["describe"]["backend"] == "classical"


def test_verify_passes_then_names_tampered_and_untracked_files():
    results = load_config(DEMO).results_dir
    _fake_run(results)
    assert verify_results(results, DEMO).ok
    (results / "tables" / "summary.md").write_text("| a |\n|---|\n| 2 |\n")
    (results / "figures" / "extra.png").write_bytes(b"new")
    report = verify_results(results, DEMO)
    assert not report.ok
    text = str(report)
    assert "tables/summary.md" in text and "changed" in text
    assert "figures/extra.png" in text and "no provenance" in text


def test_verify_without_manifest_says_how_to_fix(tmp_path):
    report = verify_results(tmp_path)
    assert not report.ok and "Rerun the pipeline" in str(report)


def test_manifest_records_dataset_index_hashes():
    import pandas as pd

    from hxpe.data.index import INDEX_COLUMNS, DatasetIndex, frame_sha256, save_index

    results = load_config(DEMO).results_dir
    row = ["d/c/test/good/0", "d", "c", "test", 0, "good", "c/test/good/0.png", "", "ab"]
    frame = pd.DataFrame([row], columns=INDEX_COLUMNS)
    save_index(DatasetIndex("d", results, frame), results / "index" / "d")
    _fake_run(results)
    manifest = json.loads((results / "provenance.json").read_text())
    assert manifest["datasets"]["d"]["index_sha256"] == frame_sha256(frame)
    assert manifest["datasets"]["d"]["n_images"] == 1


def _record(results: Path, stage: str) -> None:
    """Record ``stage`` with the outputs the pipeline declares for it (as run_stage does)."""
    from hxpe.results_layout import ResultsLayout

    now = utc_now()
    outputs = list(STAGES[stage].outputs(ResultsLayout.at(results)))
    record_stage(results, stage, params_file=DEMO, started=now, finished=now, outputs=outputs)


def test_verify_covers_every_reference_rule_and_every_file_under_the_profile():
    """Issue 24: an edited no-reference cache, a file added to a checkpoint and a fake variant's
    maps are reported; hidden staging leftovers are not artifacts."""
    results = load_config(DEMO).results_dir
    agent = results / "agent"
    agent.mkdir(parents=True)
    for name in ("descriptions.jsonl", "descriptions_noref.jsonl"):
        (agent / name).write_text('{"key": "k1"}\n')
    _record(results, "describe")
    ckpt = results / "checkpoints" / "aux_to_target" / "hxpe"
    ckpt.mkdir(parents=True)
    (ckpt / "trainable.safetensors").write_bytes(b"weights")
    (ckpt / "config.json").write_text("{}")
    _record(results, "train")
    (results / "maps" / ".aux_to_target.partial").mkdir(parents=True)
    (results / "maps" / ".aux_to_target.partial" / "x.npy").write_bytes(b"left by a kill")
    assert verify_results(results, DEMO).ok, verify_results(results, DEMO)

    (agent / "descriptions_noref.jsonl").write_text('{"key": "k2"}\n')
    (ckpt / "extra.bin").write_bytes(b"smuggled")
    fake = results / "maps" / "aux_to_target" / "fake" / "target" / "scores.csv"
    fake.parent.mkdir(parents=True)
    fake.write_text("image_id\n")
    report = verify_results(results, DEMO)
    assert report.problems == [
        "changed since stage describe wrote it: agent/descriptions_noref.jsonl",
        "no provenance: checkpoints/aux_to_target/hxpe/extra.bin is not in provenance.json",
        "no provenance: maps/aux_to_target/fake/target/scores.csv is not in provenance.json",
    ]
    assert report.checked == 4


def test_verify_refuses_manifest_paths_outside_the_results_folder(tmp_path):
    results = tmp_path / "demo"
    results.mkdir()
    (tmp_path / "secret.txt").write_text("x")
    (results / "link.txt").symlink_to(tmp_path / "secret.txt")
    artifacts = {"../secret.txt": file_sha256(tmp_path / "secret.txt"), "link.txt": "0" * 64}
    manifest = {"stages": {"figures": {"artifacts": artifacts}}}
    (results / "provenance.json").write_text(json.dumps(manifest))
    report = verify_results(results)
    assert report.problems == [
        "outside the results folder: ../secret.txt (recorded by stage figures); provenance.json "
        f"may only name files under {results}",
        "outside the results folder: link.txt (recorded by stage figures); provenance.json "
        f"may only name files under {results}",
    ]


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ('{"stages": ', "not JSON: Expecting value: line 1 column 12 (char 11)"),
        ("[1, 2]", "expected an object with a 'stages' object"),
        ('{"stages": []}', "expected an object with a 'stages' object"),
        (
            '{"stages": {"train": {"artifacts": ["a"]}}}',
            "stage 'train': 'artifacts' must map paths to SHA-256 strings",
        ),
    ],
)
def test_a_malformed_manifest_is_one_message_naming_the_file(tmp_path, text, fault):
    (tmp_path / "provenance.json").write_text(text)
    report = verify_results(tmp_path)
    assert report.problems == [
        f"{tmp_path / 'provenance.json'} is malformed ({fault}); it is written by the stages, so "
        "restore it or rerun the pipeline (make all PROFILE=...)."
    ]


def test_notebook_logging_keeps_log_lines_out_of_the_cells_and_shows_each_warning_once(
    monkeypatch, capsys
):
    import io
    import logging
    import warnings

    import hxpe.progress
    from hxpe.pipeline import configure_logging

    term = io.StringIO()
    monkeypatch.setattr(hxpe.progress, "terminal", lambda: term)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    try:
        configure_logging(notebook=True)
        configure_logging(notebook=True)  # idempotent
        log = logging.getLogger("hxpe.demo")
        log.info("step 1 of 9")
        log.warning("random weights")
        log.warning("random weights")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("deprecated thing", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    cell = capsys.readouterr().out
    assert cell.count("WARNING hxpe.demo: random weights") == 1
    assert "step 1 of 9" not in cell
    assert "deprecated thing" in cell
    assert "INFO hxpe.demo: step 1 of 9" in term.getvalue()
    assert term.getvalue().count("random weights") == 2


def test_progress_bars_write_to_the_terminal_not_to_a_cell(monkeypatch, capsys):
    import io

    import hxpe.progress
    from hxpe.progress import progress

    term = io.StringIO()
    monkeypatch.setattr(hxpe.progress, "terminal", lambda: term)
    assert list(progress(range(2), desc="epoch 1/1", mininterval=0)) == [0, 1]
    assert "epoch 1/1: 100%" in term.getvalue()
    assert capsys.readouterr() == ("", "")
