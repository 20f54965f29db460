"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright's Python API.

One setup for every browser test (the book, the app): ``apt-get install -y chromium`` (``.ci/run``
does it) and the ``playwright`` Python package; Playwright's own browser download is never used.
``HXPE_CHROMIUM`` overrides the executable.

Example:
    >>> with serve_directory(Path("build/book/demo")) as url, chromium() as browser:  # doctest: +SKIP
    ...     page = browser.new_page(); page.goto(url + "/index.html")
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install -y chromium   # Debian/Ubuntu; .ci/run does this on CI"


def chromium_path() -> str:
    """The Chromium executable; skips the test (fails on CI) when there is none."""
    path = os.environ.get("HXPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        message = f"no Chromium at {path}; install it: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (Playwright ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        pass


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on a free localhost port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
