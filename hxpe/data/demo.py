"""The embedded demo dataset: small, deterministic, in MVTec AD layout.

Two parts with disjoint classes play the paper's cross-dataset protocol: ``aux`` (the auxiliary
training set) and ``target`` (the unseen target set). Normal images come from scikit-image's bundled
photographs and from procedurally drawn objects (:mod:`hxpe.data.demo_scenes`); anomalous ones get one
of six blended defect types with a pixel mask (:mod:`hxpe.data.demo_defects`). Every image is drawn
from its own random stream seeded by ``(seed, class, split, defect type, number)``, so a rerun writes
bit-identical files. ``defects.csv`` records each image's defect type and parameters.

Example (two small target classes):
    >>> import tempfile
    >>> from hxpe.data.config import DemoDataConfig
    >>> cfg = DemoDataConfig(
    ...     image_size=64, target_classes=["gravel", "bracket"], n_train_good=1, n_test_good=1
    ... )
    >>> root = generate_demo_dataset(Path(tempfile.mkdtemp()) / "demo_target", "target", cfg)
    >>> sorted(p.name for p in root.iterdir())
    ['bracket', 'defects.csv', 'gravel']
    >>> sorted(p.name for p in (root / "gravel").iterdir())
    ['ground_truth', 'test', 'train']
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from hxpe.data.config import DemoDataConfig
from hxpe.data.demo_defects import DEFECTS, apply_defect
from hxpe.data.demo_scenes import render_normal
from hxpe.data.index import NORMAL_TYPE
from hxpe.progress import progress

logger = logging.getLogger(__name__)

CLASSES_FILE = Path(__file__).with_name("demo_classes.yaml")
DEFECTS_CSV = "defects.csv"
DEFECTS_COLUMNS = ["image", "mask", "cls", "split", "defect_type", "mask_pixels", "params"]
Part = Literal["aux", "target"]


@cache
def demo_classes() -> dict[str, dict]:
    """The demo class table (``demo_classes.yaml``): scene, tint and defect types per class."""
    table = yaml.safe_load(CLASSES_FILE.read_text())
    for name, entry in table.items():
        unknown = set(entry["defects"]) - set(DEFECTS)
        if unknown:
            raise ValueError(f"{CLASSES_FILE}: class {name!r} uses unknown defects {unknown}")
    return table


def part_classes(part: Part, cfg: DemoDataConfig) -> list[str]:
    """The classes of one part; an error for unknown classes or parts that share a class."""
    if part not in ("aux", "target"):
        raise ValueError(f"demo part must be 'aux' or 'target', got {part!r}")
    shared = set(cfg.aux_classes) & set(cfg.target_classes)
    if shared:
        raise ValueError(
            f"demo aux_classes and target_classes share {sorted(shared)}; the two parts must be "
            f"disjoint (the target plays an unseen dataset)."
        )
    classes = cfg.aux_classes if part == "aux" else cfg.target_classes
    unknown = [c for c in classes if c not in demo_classes()]
    if unknown:
        raise ValueError(
            f"unknown demo classes {unknown}; choose from {sorted(demo_classes())} "
            f"(defined in {CLASSES_FILE.name})."
        )
    return list(classes)


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator for one image; string keys are hashed with CRC-32 (stable across runs)."""
    words = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng([seed, *words])


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", optimize=False)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _plan(classes: list[str], cfg: DemoDataConfig) -> list[tuple[str, str, str, int]]:
    """(class, split, defect type, number) of every image of a part."""
    jobs = []
    for cls in classes:
        jobs += [(cls, "train", NORMAL_TYPE, i) for i in range(cfg.n_train_good)]
        jobs += [(cls, "test", NORMAL_TYPE, i) for i in range(cfg.n_test_good)]
        for defect in demo_classes()[cls]["defects"]:
            jobs += [(cls, "test", defect, i) for i in range(cfg.n_test_per_defect)]
    return jobs


def _render(root: Path, job: tuple[str, str, str, int], cfg: DemoDataConfig) -> dict:
    cls, split, defect, i = job
    rng = _rng(cfg.seed, cls, split, defect, i)
    scene = render_normal(demo_classes()[cls], cfg.image_size, rng)
    image_rel = f"{cls}/{split}/{defect}/{i:03d}.png"
    record = {"image": image_rel, "mask": "", "cls": cls, "split": split, "defect_type": defect}
    if defect == NORMAL_TYPE:
        _save_png(_to_uint8(scene.image), root / image_rel)
        return record | {"mask_pixels": 0, "params": json.dumps(scene.params, sort_keys=True)}
    image, mask, params = apply_defect(defect, scene, rng)
    mask_rel = f"{cls}/ground_truth/{defect}/{i:03d}_mask.png"
    _save_png(_to_uint8(image), root / image_rel)
    _save_png(mask.astype(np.uint8) * 255, root / mask_rel)
    params = {k: round(v, 3) if isinstance(v, float) else v for k, v in params.items()}
    return record | {
        "mask": mask_rel,
        "mask_pixels": int(mask.sum()),
        "params": json.dumps(params | {"scene": scene.params}, sort_keys=True, default=float),
    }


def generate_demo_dataset(out_root: Path, part: Part, cfg: DemoDataConfig) -> Path:
    """Write one part of the demo dataset to ``out_root`` (replaced atomically); return the root."""
    classes = part_classes(part, cfg)
    out = Path(out_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        jobs = _plan(classes, cfg)
        records = [
            _render(staging, j, cfg) for j in progress(jobs, desc=f"demo {part}", unit="img")
        ]
        table = pd.DataFrame(records, columns=DEFECTS_COLUMNS)
        table.to_csv(staging / DEFECTS_CSV, index=False, lineterminator="\n")
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("demo %s: %d images of %s written to %s", part, len(jobs), classes, out)
    return out


def generate_demo_parts(out_dir: Path, cfg: DemoDataConfig) -> dict[str, Path]:
    """Both parts, as ``<out_dir>/demo_aux`` and ``<out_dir>/demo_target``."""
    parts: tuple[Part, ...] = ("aux", "target")
    return {p: generate_demo_dataset(Path(out_dir) / f"demo_{p}", p, cfg) for p in parts}
