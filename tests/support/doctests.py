"""Doctest setup, loaded as a pytest plugin (pyproject.toml: `-p support.doctests`): the package's docstring examples run for real (``pytest hxpe``, in ``make test``).

An example may use these names without defining them; each is built the first time an example
mentions it (once per session, except ``tmp_path``), so a module's examples pay only for what they
use:

* ``tmp_path``: a fresh empty directory for this example.
* ``tiny_model``: the tiny HXPE model (AdaCLIP base, :func:`hxpe.model.tiny.tiny_model_config`),
  random-init, in eval mode; input side 112 px, an 8×8 patch grid.
* ``part_png``, ``reference_png``: ``part.png`` (a dark scratch on a grey texture) and
  ``reference.png`` (the same texture without it), 150×100 RGB
  (:func:`hxpe.data.fixtures.write_part_pair`).
* ``demo_root``: the demo generator's ``target`` part (classes gravel and bracket, 64 px) in MVTec
  layout.
* ``cfg``: the demo profile (``notebooks/params/demo.yaml``) shrunk to seconds: 64 px data, one
  auxiliary class (brick) and two target classes (gravel, bracket) with one normal training image,
  one normal and three defective test images each; the tiny random-init backbones of
  :data:`hxpe.model.tiny.TINY_MODEL` (not the demo's trained ones); variants ``hxpe`` and
  ``adaclip`` (no phrase, no DINOv2); one training step. Its ``results_dir`` (``$HXPE_RESULTS_ROOT/demo``, a temporary
  root) holds what stages 01-05 write: indexes, the agent's descriptions and extractions (classical
  describer, rule extractor), the two variants' checkpoints (random-init: stage 04's files without
  its training steps), maps, metrics and tables.
* ``checkpoint``: ``cfg``'s ``hxpe`` checkpoint directory (``checkpoints/aux_to_target/hxpe``).
* ``executed_dir``: a ``results/<profile>`` directory holding six executed notebooks (one title
  cell each), what ``make book`` renders.

``$HXPE_RESULTS_ROOT`` points at the session's temporary results root during every example, so no
example writes into ``results/``. Examples run torch on one thread: the tiny tensors gain nothing
from a second one, and on a busy machine OpenMP threads that wait for each other make every
operation many times slower.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

DIRECTION = "aux_to_target"
# doctest_namespace name -> fixture name (built only for the examples that mention the name)
NAMES = {
    "tmp_path": "tmp_path",
    "tiny_model": "doctest_tiny_model",
    "part_png": "doctest_part_png",
    "reference_png": "doctest_reference_png",
    "demo_root": "doctest_demo_root",
    "cfg": "doctest_cfg",
    "checkpoint": "doctest_checkpoint",
    "executed_dir": "doctest_executed_dir",
}


@pytest.fixture(scope="session")
def doctest_results_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("doctest-results")


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace, doctest_results_root, monkeypatch) -> None:
    """Give a doctest the names of the module docstring that its source mentions."""
    from _pytest.doctest import DoctestItem

    if not isinstance(request.node, DoctestItem):
        return
    monkeypatch.setenv("HXPE_RESULTS_ROOT", str(doctest_results_root))
    # Examples draw off screen. Set here, not in os.environ at import: this plugin is loaded by every
    # pytest run, and nbval's kernels inherit the environment (a kernel on Agg shows no figures).
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.delenv("HXPE_BOOK_PROFILE", raising=False)  # build_book sets it; restored after
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    source = "\n".join(example.source for example in request.node.dtest.examples)
    for name, fixture in NAMES.items():
        defined = re.search(rf"^(for\s+)?{name}\b\s*(=|in\b)", source, re.M)
        used = re.search(rf"(?<![\w.]){name}\b(?!\s*=(?!=))", source)
        if used and not defined:
            doctest_namespace[name] = request.getfixturevalue(fixture)


@pytest.fixture(scope="session")
def doctest_tiny_model():
    from hxpe.model.model import build_model
    from hxpe.model.tiny import tiny_model_config

    return build_model(tiny_model_config("adaclip")).eval()


@pytest.fixture(scope="session")
def doctest_images(tmp_path_factory) -> dict[str, Path]:
    from hxpe.data.fixtures import write_part_pair

    return write_part_pair(tmp_path_factory.mktemp("doctest-images"))


@pytest.fixture(scope="session")
def doctest_part_png(doctest_images) -> Path:
    return doctest_images["part"]


@pytest.fixture(scope="session")
def doctest_reference_png(doctest_images) -> Path:
    return doctest_images["reference"]


@pytest.fixture(scope="session")
def doctest_demo_root(tmp_path_factory) -> Path:
    from hxpe.data.config import DemoDataConfig
    from hxpe.data.demo import generate_demo_dataset

    small = DemoDataConfig(
        image_size=64, target_classes=["gravel", "bracket"], n_train_good=1, n_test_good=1
    )
    return generate_demo_dataset(tmp_path_factory.mktemp("doctest-demo") / "demo", "target", small)


def tiny_demo_config():
    """The demo profile shrunk for the examples (see the module docstring)."""
    import yaml

    from hxpe.config import Config, deep_merge
    from hxpe.model.tiny import TINY_MODEL
    from hxpe.paths import resolve

    raw = yaml.safe_load(resolve("notebooks/params/demo.yaml").read_text())
    small = {
        "data": {
            "demo": {
                "image_size": 64,
                "n_train_good": 1,
                "n_test_good": 1,
                "n_test_per_defect": 1,
                "aux_classes": ["brick"],
                "target_classes": ["gravel", "bracket"],
            }
        },
        "evaluation": {"image_size": 64, "aupro_steps": 20, "metrics_device": "cpu"},
        "train": {"epochs": 1, "max_steps": 1},
        "figures": {
            "images_per_dataset": 2,
            "cards_per_kind": 1,
            "comparison_rows": 1,
            "metrics": ["image_auroc", "pixel_auroc"],
            "word_examples": 1,
            "formats": ["png"],
            "dpi": 50,
        },
    }
    raw = deep_merge(raw, small)
    # the tiny random-init backbones (the demo's trained ones are tested in test_demo_backbones.py)
    raw["model"]["clip"] = TINY_MODEL["clip"]
    raw["model"]["vfm"] = TINY_MODEL["vfm"] | {"mode": "attn_bias"}
    off = {"explain": {"enabled": False}, "vfm": {"enabled": False}}
    raw["variants"] = {"hxpe": {"base": "adaclip"}, "adaclip": {"base": "adaclip", **off}}
    return Config.model_validate(raw)


@pytest.fixture(scope="session")
def doctest_cfg(doctest_results_root):
    """``cfg`` after stages 01-05 (checkpoints random-init: the train example trains for real)."""
    from hxpe.agent import run_describe, run_extract
    from hxpe.data.prepare import prepare_all
    from hxpe.evaluation.protocol import run_protocol
    from hxpe.evaluation.tables import table_options, write_tables
    from hxpe.model.checkpoint import save_checkpoint
    from hxpe.model.model import build_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HXPE_RESULTS_ROOT", str(doctest_results_root))
        cfg = tiny_demo_config()
        layout = cfg.layout
        indexes = prepare_all(cfg)
        descriptions, extractions = layout.agent_caches(cfg.data.reference_rule)
        run_describe(list(indexes.values()), cfg.agent, descriptions)
        run_extract(descriptions, cfg.agent, extractions, clip=cfg.model.clip)
        for variant in cfg.variants:
            out = layout.checkpoint_dir(DIRECTION, variant)
            out.mkdir(parents=True)
            save_checkpoint(build_model(cfg.model_for(variant)), out, {"note": "random-init"})
        run_protocol(cfg)
        write_tables(layout.root, **table_options(cfg))
    return cfg


@pytest.fixture(scope="session")
def doctest_checkpoint(doctest_cfg, doctest_results_root) -> Path:
    return doctest_cfg.layout.checkpoint_dir(DIRECTION, "hxpe")


@pytest.fixture(scope="session")
def doctest_executed_dir(tmp_path_factory) -> Path:
    import nbformat

    from hxpe.pipeline import STAGES

    out = tmp_path_factory.mktemp("doctest-executed") / "demo"
    out.mkdir()
    for stage in STAGES.values():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "hxpe", "display_name": "Python", "language": "python"}
        nb.cells = [nbformat.v4.new_markdown_cell(f"# Stage {stage.name}")]
        nbformat.write(nb, out / stage.notebook)
    return out
