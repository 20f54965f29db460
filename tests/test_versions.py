"""One version collector for every artifact that records what made it."""

from __future__ import annotations

import platform
from importlib import metadata

from hxpe import versions
from hxpe.versions import TRACKED_PACKAGES, software_versions


def test_versions_cover_every_package_any_artifact_recorded():
    # the union of the lists the run manifest, agent records and predictions kept before
    recorded_before = {
        "hxpe", "torch", "torchvision", "open_clip_torch", "transformers", "huggingface_hub",
        "numpy", "scipy", "pandas", "scikit-learn", "scikit-image", "pillow", "papermill", "vllm",
    }  # fmt: skip
    assert set(TRACKED_PACKAGES) == recorded_before
    found = software_versions()
    assert list(found) == ["python", *TRACKED_PACKAGES]
    assert found["python"] == platform.python_version()
    assert found["torch"] == metadata.version("torch")
    assert found["numpy"] == metadata.version("numpy")


def test_missing_package_is_none_and_callers_get_their_own_dict(monkeypatch):
    versions._collect.cache_clear()
    monkeypatch.setattr(versions, "TRACKED_PACKAGES", ("torch", "no-such-package-hxpe"))
    try:
        found = software_versions()
        assert found == {
            "python": platform.python_version(),
            "torch": metadata.version("torch"),
            "no-such-package-hxpe": None,
        }
        found["torch"] = "changed"
        assert software_versions()["torch"] == metadata.version("torch")
    finally:
        versions._collect.cache_clear()
