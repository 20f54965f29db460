"""Test-wide settings: offline hubs, quiet threads, results redirected away from results/."""

from __future__ import annotations

import os

# Set before any test module imports huggingface_hub/transformers/open_clip (they read these once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_results(tmp_path_factory, monkeypatch):
    """Every test writes profile results under a temporary root, never into results/."""
    monkeypatch.setenv("HXPE_RESULTS_ROOT", str(tmp_path_factory.mktemp("results")))


@pytest.fixture(autouse=True)
def _hxpe_loggers_enabled():
    """Some libraries configure logging with ``disable_existing_loggers`` (a dictConfig) when a test
    runs them; the package's loggers created before that would stay silent for later tests that
    check their messages. Re-enable them before each test."""
    import logging

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("hxpe") and isinstance(logger, logging.Logger):
            logger.disabled = False
