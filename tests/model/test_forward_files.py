"""The default forward pass (AdaCLIP base, explainable phrase, DINOv2 prompt) reads in at most six
files of ``hxpe/model``: every Python function it calls there is recorded (``sys.setprofile``) and
the files they live in are counted."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest
import torch

import hxpe.model
from hxpe.model.dinov2_prompt import ReferenceCache
from hxpe.model.explainable import PhraseCache
from hxpe.model.model import build_model
from hxpe.model.tiny import tiny_model_config

MODEL_DIR = Path(hxpe.model.__file__).resolve().parent
FORWARD_FILES = [
    "bases/adaclip.py",  # the base: conditioning, prompts, projections, hybrid semantic fusion
    "bases/base.py",  # the interface's defaults the base keeps (no learnable text context)
    "clip_tower.py",  # CLIP's vision and text towers, the attention with the key bias
    "dinov2_prompt.py",  # the prompt map and the key bias
    "explainable.py",  # the gate, the phrase slot, the fusion, the text embeddings
    "model.py",  # the glue and the anomaly map
]


def files_called(run: Callable[[], object]) -> list[str]:
    """The files of ``hxpe/model`` whose Python functions ``run()`` calls."""
    seen: set[str] = set()

    def record(frame: FrameType, event: str, arg: object) -> None:
        path = Path(frame.f_code.co_filename)
        if event == "call" and path.is_relative_to(MODEL_DIR):
            seen.add(path.relative_to(MODEL_DIR).as_posix())

    sys.setprofile(record)
    try:
        run()
    finally:
        sys.setprofile(None)
    return sorted(seen)


@pytest.mark.parametrize(("mode", "caches"), [("in_prompt", False), ("fuse", True)])
def test_the_default_forward_pass_reads_six_files(mode: str, caches: bool) -> None:
    """Both phrase modes (in the prompt, the paper's default; fused, the demo's), without and
    with the inference caches (the files are the same either way)."""
    cfg = tiny_model_config("adaclip", explain={"mode": mode})
    assert cfg.base == "adaclip" and cfg.explain.enabled and cfg.vfm.enabled
    model = build_model(cfg).eval()
    images, refs = torch.rand(2, 3, 112, 112), torch.rand(2, 3, 112, 112)
    options = {"phrase_cache": PhraseCache(), "reference_cache": ReferenceCache()} if caches else {}
    with torch.no_grad():
        called = files_called(lambda: model(images, ["a scratch", None], refs, **options))
    assert called == FORWARD_FILES


def test_the_count_sees_a_file_the_pass_calls_into() -> None:
    """The recorder is not blind: a call into another file of the package is counted."""
    import hxpe.model.bases  # noqa: F401  (the recipes registered)
    from hxpe.model.recipes import recipe, recipe_layers

    assert files_called(lambda: recipe_layers(recipe("adaclip"), [1, 2])) == ["recipes.py"]
