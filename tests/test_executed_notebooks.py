"""The executed demo notebooks of `make nbtest` as a reader sees them: every notebook shows at least
two pictures, no figure object is printed without its picture, and no log wall, progress bar or empty
widget is saved in them (progress and log lines go to the terminal). Run by `make booktest` on
``$HXPE_NOTEBOOK_DIR`` (default ``build/nbval/demo``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

from hxpe.paths import repo_root
from hxpe.pipeline import STAGES

pytestmark = pytest.mark.executed

RUN = Path(os.environ.get("HXPE_NOTEBOOK_DIR", repo_root() / "build" / "nbval" / "demo"))
OBJECT_REPR = re.compile(r"^<(matplotlib|seaborn|Figure|Axes|.*FacetGrid|.*Axes)[^>]*>$")
LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (DEBUG|INFO) ", re.M)
NOTEBOOKS = [s.notebook for s in STAGES.values()]


def problems_of(nb: nbformat.NotebookNode) -> tuple[int, list[str]]:
    """(pictures shown, what a reader should not see) of one executed notebook."""
    pictures, found = 0, []
    for k, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            pictures += "image/png" in data or "image/jpeg" in data
            plain = str(data.get("text/plain", "")).strip()
            if OBJECT_REPR.match(plain) and not ({"image/png", "image/jpeg"} & set(data)):
                found.append(f"cell {k}: a figure object printed without its picture: {plain!r}")
            if "application/vnd.jupyter.widget-view+json" in data:
                found.append(f"cell {k}: a widget (a progress bar?) saved in the notebook")
            text = str(out.get("text", ""))
            if "\r" in text:
                found.append(f"cell {k}: a progress bar ({text.strip()[:50]!r}...)")
            if LOG_LINE.search(text):
                found.append(f"cell {k}: log lines ({LOG_LINE.search(text).group(0)!r}...)")
    return pictures, found


def test_markdown_tables_are_counted_outside_code_fences():
    from test_book_browser import markdown_tables

    text = "| a | b |\n|---|--:|\n| 1 | 2 |\n\n```\n|---|---|\n```\n| c |\n| :-- |\n"
    assert markdown_tables(text) == 2


def test_the_check_sees_what_a_reader_would_not_want():
    bad = nbformat.v4.new_code_cell("x")
    bad.outputs = [
        nbformat.v4.new_output("execute_result", data={"text/plain": "<seaborn.axisgrid.FacetGrid at 0x7f>"}),
        nbformat.v4.new_output("stream", name="stderr", text="epoch 1:  10%|#\repoch 1: 20%|##"),
        nbformat.v4.new_output("stream", name="stdout", text="2026-01-01 10:00:00,123 INFO hxpe.x: y\n"),
    ]  # fmt: skip
    good = nbformat.v4.new_code_cell("fig")
    good.outputs = [
        nbformat.v4.new_output(
            "display_data", data={"image/png": "iVBO", "text/plain": "<Figure size 640x480 with 1 Axes>"}
        )
    ]  # fmt: skip
    nb = nbformat.v4.new_notebook(cells=[bad, good])
    pictures, found = problems_of(nb)
    assert pictures == 1
    kinds = [f.split(": ", 1)[1] for f in found]
    assert [k.split(" (")[0].split(":")[0] for k in kinds] == [
        "a figure object printed without its picture",
        "a progress bar",
        "log lines",
    ]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_executed_notebook_shows_its_pictures_and_no_log_wall(name):
    path = RUN / name
    if not path.is_file():
        pytest.fail(f"no executed notebook {path}: run `make nbtest` first")
    pictures, found = problems_of(nbformat.read(path, as_version=4))
    assert pictures >= 2, f"{name} shows {pictures} picture(s); every notebook shows at least two"
    assert not found, found
