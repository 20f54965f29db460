"""The last lines of `make test` say plainly whether the browser tests could run (tests/support/browser.py)."""

from __future__ import annotations

from support import browser


def test_a_missing_chromium_is_said_plainly_and_fails_only_under_ci(monkeypatch, capsys):
    monkeypatch.setattr(browser, "chromium_path", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    assert browser.main() == 0
    out = capsys.readouterr().out
    assert "BROWSER TESTS NOT RUN" in out and "apt-get install -y chromium" in out
    monkeypatch.setenv("CI", "true")
    assert browser.main() == 1


def test_a_found_chromium_is_named(monkeypatch, capsys):
    monkeypatch.setattr(browser, "chromium_path", lambda: "/usr/bin/chromium")
    assert browser.main() == 0
    assert "browser tests ran (Chromium: /usr/bin/chromium)" in capsys.readouterr().out
