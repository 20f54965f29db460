"""``make book``: the source tree and a real Sphinx build of executed notebooks (nothing re-executed)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib
import nbformat
import pytest

from hxpe.book import BOOK_OUTPUT, build_book, executed_notebooks, stage_sources
from hxpe.pipeline import STAGES

matplotlib.use("Agg")


def _png() -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _executed(results: Path) -> None:
    """Six executed-looking notebooks: math in markdown, a code cell whose output is a PNG. The code
    would fail if it ran (``raise``), so a build that executed anything would fail."""
    results.mkdir(parents=True)
    png = _png()
    for stage in STAGES.values():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "hxpe",
            "display_name": "Python (hxpe)",
            "language": "python",
        }
        nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
        code = nbformat.v4.new_code_cell("raise SystemExit('executed at build time')")
        code.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png})]
        code.execution_count = 1
        params = nbformat.v4.new_code_cell('params_file = "HIDDEN-PARAMETERS"')
        params.metadata["tags"] = ["parameters"]
        table = nbformat.v4.new_code_cell("display(Markdown(table))")
        table.outputs = [
            nbformat.v4.new_output(
                "display_data", data={"text/markdown": MARKDOWN_TABLE, "text/plain": "<md>"}
            )
        ]
        nb.cells = [
            nbformat.v4.new_markdown_cell(f"# {stage.name}\n\n$$\nx^2 + y^2 = z^2\n$$"),
            params,
            code,
            table,
        ]
        nbformat.write(nb, results / stage.notebook)
    (results / "figures").mkdir()
    (results / "figures" / "qualitative_a_b.png").write_bytes(base64.b64decode(png))


MARKDOWN_TABLE = "**summary.md**\n\n| variant | AUROC |\n|---|---:|\n| hxpe | 50.0 |\n"


def test_missing_notebooks_are_named_with_the_command(tmp_path):
    (tmp_path / "demo").mkdir()
    with pytest.raises(FileNotFoundError, match=r"make all PROFILE=demo") as err:
        executed_notebooks(tmp_path / "demo")
    assert "01_data_prep.ipynb" in str(err.value)


def test_source_tree_holds_readme_method_ledger_and_the_notebooks(tmp_path):
    _executed(tmp_path / "demo")
    src = stage_sources(tmp_path / "demo", tmp_path / "src")
    names = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert names == sorted(
        ["conf.py", "index.md", "method.md", "favicon.svg", "readme.md", "ledger.md"]
        + ["_static/hxpe.css", "teaser.md", "teaser.png"]
        + [f"notebooks/{s.notebook}" for s in STAGES.values()]
        + ["results/reference/app.png"]  # the README's screenshot, beside the page that shows it
    )
    assert 'nb_execution_mode = "off"' in (src / "conf.py").read_text()


def test_build_renders_the_executed_outputs(tmp_path):
    _executed(tmp_path / "demo")
    index = build_book(tmp_path / "demo", tmp_path / "book", profile="demo")
    book = index.parent
    page = (book / "notebooks" / "04_training.html").read_text()
    assert "executed at build time" in page  # the source is shown ...
    images = list((book / "_images").glob("*.png"))
    assert images, "the notebooks' PNG outputs are in the book"
    assert "<img" in page
    assert (book / "_static" / "mathjax" / "tex-chtml.js").is_file()  # math offline
    for name in ("readme", "method", "ledger"):
        assert (book / f"{name}.html").is_file()
    home = (book / "index.html").read_text()
    assert "HXPE compendium: demo profile" in home
    assert "Demo profile." in home and 'class="admonition warning' in home  # the demo warning
    assert "_images/teaser.png" in home
    assert home.count('href="notebooks/0') >= 6  # one line per notebook
    assert "HIDDEN-PARAMETERS" not in page  # parameters cells are hidden
    assert "<table" in page and "|---|" not in page  # the markdown output is a table
    assert "hxpe.css" in page
    # a real book is what the next build recognises as a previous book (and replaces)
    assert BOOK_OUTPUT.missing(book) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".src-book"]


def test_a_book_of_another_profile_has_no_demo_warning_and_says_when_there_is_no_figure(tmp_path):
    _executed(tmp_path / "paper")
    (tmp_path / "paper" / "figures" / "qualitative_a_b.png").unlink()
    index = build_book(tmp_path / "paper", tmp_path / "book", profile="paper")
    home = index.read_text()
    assert "Demo profile." not in home
    assert "No teaser: stage 06 wrote no figure" in home
