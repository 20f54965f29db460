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
