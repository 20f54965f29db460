"""The built book, page by page, in headless Chromium: no broken image or link, no console error.

Needs a built book (``make book``; ``make test`` builds the one of its notebook run in ``booktest``)
at ``$HXPE_BOOK_DIR`` (default ``build/book/demo``). Saves a full-page screenshot of every page under
``build/book-shots/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from browser import chromium, serve_directory

from hxpe.paths import repo_root

pytestmark = pytest.mark.browser

BOOK = Path(os.environ.get("HXPE_BOOK_DIR", repo_root() / "build" / "book" / "demo"))
SHOTS = repo_root() / "build" / "book-shots"
PAGES = (
    "index.html",
    "readme.html",
    "method.html",
    "ledger.html",
    *(f"notebooks/{n}.html" for n in (
        "01_data_prep",
        "02_vlm_descriptions",
        "03_llm_extraction",
        "04_training",
        "05_evaluation",
        "06_explainability_figures",
    )),
)  # fmt: skip

BROKEN_IMAGES = """() => Array.from(document.images)
    .filter(img => !img.complete || img.naturalWidth === 0)
    .map(img => img.getAttribute('src'))"""
LINKS = "() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
IMAGES = "() => document.images.length"


def _book_pages() -> list[str]:
    if not (BOOK / "index.html").is_file():
        pytest.fail(f"no book at {BOOK}; build it first: make book PROFILE=demo")
    return sorted(
        str(p.relative_to(BOOK)) for p in BOOK.rglob("*.html") if "_static" not in p.parts
    )


def _target_exists(url: str, base: str) -> bool:
    """Whether a same-site link points at a file of the book (fragments and queries ignored)."""
    path = unquote(urlsplit(url).path).lstrip("/")
    target = BOOK / path
    return (target / "index.html").is_file() if target.is_dir() else target.is_file()


def test_every_page_renders_without_errors():
    pages = _book_pages()
    assert set(PAGES) <= set(pages), f"book pages missing: {sorted(set(PAGES) - set(pages))}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems: dict[str, list[str]] = {}
    n_images = {}
    with serve_directory(BOOK) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.on(
            "response",
            lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
        )
        for name in pages:
            errors.clear()
            page.goto(f"{base}/{name}", wait_until="networkidle")
            found = list(errors)
            found += [f"broken image: {src}" for src in page.evaluate(BROKEN_IMAGES)]
            for link in page.evaluate(LINKS):
                parts = urlsplit(link)
                if parts.scheme in ("http", "https") and link.startswith(base):
                    if not _target_exists(link, base):
                        found.append(f"broken link: {link}")
                elif parts.scheme not in ("http", "https", "mailto"):
                    found.append(f"unexpected link: {link}")
            n_images[name] = page.evaluate(IMAGES)
            shot = SHOTS / (name.replace("/", "__").removesuffix(".html") + ".png")
            page.screenshot(path=str(shot), full_page=True)
            if found:
                problems[name] = found
    assert not problems, problems
    assert len(list(SHOTS.glob("*.png"))) >= len(pages)
    # every executed notebook page carries its figures (the walk-through's pictures among them)
    for name in PAGES[4:]:
        assert n_images[name] >= 1, f"{name} shows no figure"


def test_math_is_typeset_offline():
    _book_pages()
    with serve_directory(BOOK) as base, chromium() as browser:
        page = browser.new_page()
        page.goto(f"{base}/method.html", wait_until="networkidle")
        page.wait_for_selector("mjx-container", timeout=15000)
        assert page.evaluate("() => document.querySelectorAll('mjx-container').length") >= 5
