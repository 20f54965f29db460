"""``make book``: a static HTML book of one executed profile (Sphinx + myst-nb + sphinx-book-theme).

The book holds the README, the method page, the ledger and the six notebooks exactly as ``make all``
executed them into ``results/<profile>/`` (with their figures). Nothing executes while it is built
(``nb_execution_mode = "off"``). The sources (``conf.py``, ``index.md``, ``method.md``, ``favicon.svg``) live in
``notebooks/book/``; :func:`stage_sources` gathers them with the README, the ledger and the executed
notebooks into one source tree, and :func:`build_book` runs Sphinx on it.

Example (six executed notebooks of a profile, each a title cell; Sphinx renders, nothing runs):
    >>> index = build_book(executed_dir, tmp_path / "book", profile="demo")
    >>> index.name
    'index.html'
    >>> sorted(p.name for p in (index.parent / "notebooks").glob("*.html"))
    ['01_data_prep.html', '02_vlm_descriptions.html', '03_llm_extraction.html',
     '04_training.html', '05_evaluation.html', '06_explainability_figures.html']
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

from hxpe.atomic import OutputKind, OutputRefused, check_output_dir, replace_dir
from hxpe.paths import repo_root
from hxpe.pipeline import STAGES
from hxpe.results_layout import ResultsLayout

log = logging.getLogger(__name__)

BOOK_SOURCES = ("conf.py", "index.md", "method.md", "favicon.svg", "_static/hxpe.css")
# Cells the book hides (myst-nb's ``remove-cell``): papermill's parameters, as the notebook has them
# and as papermill injected them.
HIDDEN_CELL_TAGS = ("parameters", "injected-parameters")
# (source relative to the repository root, page name in the book)
PAGES = (("README.md", "readme.md"), ("hxpe/LEDGER.md", "ledger.md"))
# A previous book (Sphinx's HTML output) and a previous source tree: the folders this module replaces.
BOOK_OUTPUT = OutputKind("book", ("index.html", ".buildinfo"))
SOURCE_TREE = OutputKind("book source tree", ("conf.py", "index.md"))


def executed_notebooks(results_dir: Path) -> list[Path]:
    """The six executed notebooks of a profile, in stage order; raises naming the missing ones."""
    layout = ResultsLayout.at(results_dir)
    paths = [layout.notebook(stage.notebook) for stage in STAGES.values()]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{results_dir} lacks the executed notebooks {missing}; run `make all "
            f"PROFILE={results_dir.name}` first (the book renders them, it does not run them)."
        )
    return paths


def linked_images(markdown: str, root: Path) -> list[str]:
    """Repository-relative images a markdown page shows (``![alt](path)``) that exist under ``root``.

    Example:
        >>> linked_images("![shot](results/reference/app.png) ![web](https://x/y.png)", repo_root())
        ['results/reference/app.png']
    """
    paths = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", markdown)
    return [p for p in paths if "://" not in p and (root / p).is_file()]


def stage_sources(results_dir: Path, src: Path) -> Path:
    """Lay out the book's source tree in ``src`` (emptied first: it must be new, empty or a previous
    source tree) and return it."""
    notebooks = executed_notebooks(results_dir)
    root = repo_root()
    check_output_dir(src, SOURCE_TREE, option="book source folder")
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    for name in BOOK_SOURCES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / "notebooks" / "book" / name, src / name)
    write_teaser(results_dir, src)
    for rel, page in PAGES:
        shutil.copy2(root / rel, src / page)
        for image in linked_images((root / rel).read_text(), root):
            (src / image).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / image, src / image)
    for nb in notebooks:
        hide_parameter_cells(nb, src / "notebooks" / nb.name)
    return src


def hide_parameter_cells(notebook: Path, target: Path) -> int:
    """Copy ``notebook`` to ``target`` with its parameters cells tagged ``remove-cell`` (the book
    hides them); returns how many it tagged. The executed notebook itself is left as it is."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    hidden = 0
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if any(t in HIDDEN_CELL_TAGS for t in tags) and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
            hidden += 1
    nbformat.write(nb, target)
    return hidden


def teaser_figure(results_dir: Path) -> Path | None:
    """The index page's teaser: the first qualitative figure stage 06 wrote (maps beside ground
    truth, DINOv2 prompt and phrase), else its first figure; None when it wrote none."""
    figures = ResultsLayout.at(results_dir).figures_dir
    for pattern in ("qualitative_*.png", "*.png"):
        found = sorted(figures.glob(pattern)) if figures.is_dir() else []
        if found:
            return found[0]
    return None


def write_teaser(results_dir: Path, src: Path) -> Path:
    """``src/teaser.md``, included by the index page: the teaser figure with its caption, or a line
    saying that stage 06 wrote no figure."""
    figure = teaser_figure(results_dir)
    out = src / "teaser.md"
    if figure is None:
        out.write_text("*No teaser: stage 06 wrote no figure into this profile's results.*\n")
        return out
    shutil.copy2(figure, src / "teaser.png")
    out.write_text(
        "```{figure} teaser.png\n:alt: maps, ground truth, DINOv2 prompts and phrases\n:width: "
        f"100%\n\nWhat the compendium produces (`figures/{figure.name}`, notebook 06): each test "
        "image with its ground truth, the anomaly map, the DINOv2 attention prompt and the "
        "agent's explainable phrase.\n```\n"
    )
    return out


def build_book(
    results_dir: Path, out: Path, *, profile: str, src: Path | None = None, force: bool = False
) -> Path:
    """Build the HTML book of ``results_dir`` into ``out``; returns ``out/index.html``.

    Sphinx warnings are errors (a missing page, a broken cross-reference or image fails the build).
    The book is built beside ``out`` and renamed into place on success; an existing ``out`` must be
    empty or a previous book, unless ``force`` (:func:`hxpe.atomic.check_output_dir`).
    """
    from sphinx.cmd.build import build_main

    started = time.perf_counter()
    out = Path(out)
    check_output_dir(out, BOOK_OUTPUT, force=force)
    src = stage_sources(results_dir, src or out.parent / f".src-{out.name}")
    os.environ["HXPE_BOOK_PROFILE"] = profile
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    args = [
        "-b",
        "html",
        "-q",
        "-W",
        "--keep-going",
        "-d",
        str(src / ".doctrees"),
        str(src),
        str(staging),
    ]
    try:
        status = build_main(args)
        if status != 0:
            raise RuntimeError(
                f"sphinx-build failed (exit {status}) on {src}; see the warnings above"
            )
        replace_dir(staging, out, BOOK_OUTPUT, force=force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    index = out / "index.html"
    log.info("book of %s built in %.1f s: %s", results_dir, time.perf_counter() - started, index)
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hxpe.book", description="Build the HTML book of an executed profile."
    )
    parser.add_argument("--results", type=Path, required=True, help="results/<profile>/")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="build/book/<profile>/: new, empty, or a previous book (replaced)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace --out even when it is not a previous book"
    )
    parser.add_argument("--profile", default=None, help="profile name (default: results' name)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        index = build_book(
            args.results, args.out, profile=args.profile or args.results.name, force=args.force
        )
    except (OutputRefused, FileNotFoundError) as err:
        print(f"python -m hxpe.book: error: {err}", file=sys.stderr)
        return 2
    print(f"Book: {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
