"""Shared set-up of the browser tests (the app, the book): headless Chromium from Debian
(``apt-get install chromium``, ``/usr/bin/chromium``; ``HXPE_CHROMIUM`` overrides) driven by
Playwright's Python API (its own browser download is never used), a free local port for a server,
and a static file server for a built book.

Without Playwright or Chromium a browser test is skipped with the install command, except under CI
(``CI=true``), where ``.ci/run`` installs Chromium and a missing browser is a failure.

Example (in a test module)::

    from support.browser import browser_page, free_port

    with browser_page() as page:
        page.goto(f"http://127.0.0.1:{port}/")
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
# As root in a sandbox with a closed network: no sandbox, no GPU, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
INSTALL_HINT = "apt-get install -y chromium && pip install -c constraints.txt -e '.[test]'"


def chromium_path() -> str | None:
    """The Chromium executable (``HXPE_CHROMIUM`` overrides), or None when there is none."""
    override = os.environ.get("HXPE_CHROMIUM")
    if override:
        return override
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def require_browser() -> str:
    """Chromium's path; skip the test (fail under CI) when Playwright or Chromium is missing."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    path = chromium_path()
    if path is None:
        missing.append("Chromium (/usr/bin/chromium)")
    if missing:
        message = f"browser test needs {' and '.join(missing)}: {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path  # type: ignore[return-value]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright ``Browser``); browser and driver are closed afterwards."""
    executable = require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A Playwright ``Page`` in headless Chromium of ``width`` x ``height``."""
    with chromium() as browser:
        yield browser.new_page(viewport={"width": width, "height": height})


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


def browser_report() -> tuple[bool, str]:
    """(found, one plain line) on whether the browser tests could run here."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False, f"the playwright package is missing: {INSTALL_HINT}"
    path = chromium_path()
    if path is None:
        return False, f"Chromium is missing: {INSTALL_HINT}"
    return True, f"Chromium: {path}"


def main() -> int:
    """``python tests/support/browser.py``: the last lines of ``make test`` say plainly whether the browser
    tests ran; exit 1 under CI when they could not."""
    found, line = browser_report()
    if found:
        print(f"browser tests ran ({line})")
        return 0
    bar = "!" * 78
    print(f"{bar}\nBROWSER TESTS NOT RUN (book and app, skipped): {line}\n{bar}")
    return 1 if os.environ.get("CI", "").lower() == "true" else 0


if __name__ == "__main__":
    raise SystemExit(main())
