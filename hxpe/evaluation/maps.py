"""A per-image anomaly-map store on disk, so that metrics recompute without inference.

Layout of one store (``results/<profile>/maps/<direction>/<variant>/<dataset>/``)::

    maps/<safe name>.npy    one [H, W] map per image (``map_dtype``, float32 by default)
    vfm/<safe name>.npy     the DINOv2 attention prompt [h, w], when the model returns one
    scores.csv              image_id, cls, label, image_score, file
    manifest.json           {"key": <inputs hash>, "n_images", "dtype", "image_size"}: written last
    full_precision/         float16 stores only: per_class.csv + skipped.csv, the metrics computed
                            from the float32 maps before they were cast (:meth:`MapStore.compact`)

Metrics are always computed from float32 maps. A float16 store (half the disk) is written in float32
first, scored, then cast in place; its metrics are kept beside it, since the float16 maps would shift
them (by up to 1 AUPRO point on flat maps).

Writes stream: each map goes to its own file as it arrives and score rows are appended to a partial
CSV, so peak memory does not grow with the dataset. A run writes into a staging folder beside the store
(``.<dataset>.partial``) and replaces the store with it only when it finished: a failed or killed run
(``kill -9`` included) leaves the previous complete store as it was; the next run reuses it when its
inputs did not change (removing the killed run's staging folder), else starts it afresh.

Example:
    >>> store = MapStore(tmp_path / "maps")
    >>> with store.writer(key="abc", image_size=4) as w:
    ...     w.add("ds/cls/test/good/000", np.zeros((4, 4)), cls="cls", label=0, image_score=0.1)
    ...     w.add("ds/cls/test/scratch/000", np.eye(4), cls="cls", label=1, image_score=0.9)
    >>> store.is_complete("abc"), store.manifest()["n_images"]
    (True, 2)
    >>> ids, maps = store.class_maps("cls")
    >>> ids, maps.shape, maps.dtype
    (['ds/cls/test/good/000', 'ds/cls/test/scratch/000'], (2, 4, 4), dtype('float32'))
    >>> store.scores()[["image_id", "label", "image_score"]].values.tolist()
    [['ds/cls/test/good/000', 0, 0.1], ['ds/cls/test/scratch/000', 1, 0.9]]
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hxpe.atomic import OutputKind, replace_dir, write_text_atomic

logger = logging.getLogger(__name__)

SCORE_COLUMNS = ["image_id", "cls", "label", "image_score", "file"]
FULL_PRECISION_DIR = "full_precision"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Every store, complete or left by an older interrupted run, holds maps/: the folder a run replaces.
MAP_STORE = OutputKind("map store", ("maps",))


def safe_name(image_id: str) -> str:
    """A file-system-safe, collision-free name for an image id.

    >>> safe_name("mvtec/bottle/test/broken large/000")
    'mvtec__bottle__test__broken_large__000-71ce8ca1'
    """
    readable = _UNSAFE.sub("_", image_id.replace("/", "__"))[-120:]
    digest = hashlib.sha1(image_id.encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class MapWriter:
    """Streams maps and scores of one inference run into a :class:`MapStore`."""

    def __init__(self, store: MapStore) -> None:
        self.store = store
        self.n = 0
        self._fh = open(store.partial_scores_path, "w", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._fh, lineterminator="\n")
        self._csv.writerow(SCORE_COLUMNS)
        self._seen: set[str] = set()

    def add(
        self,
        image_id: str,
        anomaly_map: np.ndarray | torch.Tensor,
        *,
        cls: str,
        label: int,
        image_score: float,
        vfm_prompt: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Store one image's ``[H, W]`` map (and optional ``[h, w]`` VFM prompt) and score."""
        if image_id in self._seen:
            raise ValueError(f"image_id {image_id!r} written twice to {self.store.root}")
        score = float(image_score)
        if not np.isfinite(score):
            raise ValueError(f"image score of {image_id!r} is {score}; check the model output")
        name = safe_name(image_id)
        amap = self._cast(_to_numpy(anomaly_map), image_id, "anomaly map")
        if amap.ndim != 2:
            raise ValueError(f"anomaly map of {image_id!r} must be [H, W]; got shape {amap.shape}")
        atomic_save_npy(self.store.map_path(image_id), amap)
        if vfm_prompt is not None:
            atomic_save_npy(
                self.store.vfm_path(image_id),
                self._cast(_to_numpy(vfm_prompt), image_id, "VFM prompt"),
            )
        self._csv.writerow([image_id, cls, int(label), repr(score), f"{name}.npy"])
        self._seen.add(image_id)
        self.n += 1

    def _cast(self, array: np.ndarray, image_id: str, what: str) -> np.ndarray:
        with np.errstate(over="ignore"):
            out = array.astype(self.store.dtype)
        if not np.isfinite(out).all():
            hint = (
                " (it overflows float16: set evaluation.map_dtype: float32)"
                if np.isfinite(array).all()
                else ""
            )
            raise ValueError(f"{what} of {image_id!r} has non-finite values{hint}")
        return out

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class MapStore:
    """The maps and scores of one (direction, variant, dataset), keyed by ``image_id``."""

    def __init__(self, root: str | Path, dtype: str = "float32") -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"map dtype must be float16 or float32; got {dtype!r}")
        self.root = Path(root)
        self.dtype = np.dtype(dtype)

    # paths ------------------------------------------------------------------------------------
    @property
    def scores_path(self) -> Path:
        return self.root / "scores.csv"

    @property
    def partial_scores_path(self) -> Path:
        return self.root / "scores.partial.csv"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def staging_root(self) -> Path:
        """Where a run writes until it finished (:meth:`writer`), beside the store."""
        return self.root.parent / f".{self.root.name}.partial"

    def map_path(self, image_id: str) -> Path:
        return self.root / "maps" / f"{safe_name(image_id)}.npy"

    def vfm_path(self, image_id: str) -> Path:
        return self.root / "vfm" / f"{safe_name(image_id)}.npy"

    # state ------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any] | None:
        """The manifest of a finished run, or None."""
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text())

    def is_complete(self, key: str) -> bool:
        """Whether a finished run with inputs ``key`` is on disk."""
        manifest = self.manifest()
        return (
            manifest is not None
            and manifest.get("key") == key
            and manifest.get("dtype") == self.dtype.name
            and self.scores_path.is_file()
        )

    # writing ----------------------------------------------------------------------------------
    def discard_staging(self) -> None:
        """Remove what a killed run left in :attr:`staging_root` (when this store is reused)."""
        shutil.rmtree(self.staging_root, ignore_errors=True)

    def make_folders(self) -> None:
        """Create the store's ``maps/`` and ``vfm/`` folders."""
        for sub in (self.root / "maps", self.root / "vfm"):
            sub.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def writer(self, key: str, **meta: Any) -> Iterator[MapWriter]:
        """Start a fresh run in :attr:`staging_root` (a previous run's leftovers there removed);
        when the block exits without error the manifest is written and the staged store replaces
        this one. Until then this store is untouched. Extra ``meta`` goes into the manifest."""
        staged = MapStore(self.staging_root, self.dtype.name)
        staged.clear()
        staged.make_folders()
        w = MapWriter(staged)
        try:
            try:
                yield w
            finally:
                w.close()
            os.replace(staged.partial_scores_path, staged.scores_path)
            manifest = {"key": key, "n_images": w.n, "dtype": self.dtype.name, **meta}
            write_text_atomic(staged.manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
            replace_dir(staged.root, self.root, MAP_STORE)
        except BaseException:
            shutil.rmtree(staged.root, ignore_errors=True)
            raise

    def compact(
        self, dtype: str, per_class: pd.DataFrame, skipped: pd.DataFrame, metrics_key: str
    ) -> None:
        """Cast a finished store's maps to ``dtype`` in place, keeping the metrics computed from
        the full-precision maps (``per_class``, ``skipped``) under ``metrics_key``."""
        manifest = self.manifest()
        if manifest is None:
            raise RuntimeError(f"{self.root} holds no finished run to compact")
        target = np.dtype(dtype)
        full = self.root / FULL_PRECISION_DIR
        full.mkdir(exist_ok=True)
        for name, frame in (("per_class.csv", per_class), ("skipped.csv", skipped)):
            write_text_atomic(full / name, frame.to_csv(index=False, lineterminator="\n"))
        for sub in ("maps", "vfm"):
            for path in sorted((self.root / sub).glob("*.npy")):
                with np.errstate(over="ignore"):
                    cast = np.load(path).astype(target)
                if not np.isfinite(cast).all():
                    raise ValueError(
                        f"{path} overflows {target.name}: set evaluation.map_dtype: float32"
                    )
                atomic_save_npy(path, cast)
        manifest.update(dtype=target.name, metrics_from="float32", metrics_key=metrics_key)
        write_text_atomic(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
        self.dtype = target

    def full_precision_metrics(self, metrics_key: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """The metrics kept by :meth:`compact` when they were computed under ``metrics_key``."""
        manifest = self.manifest() or {}
        full = self.root / FULL_PRECISION_DIR
        if manifest.get("metrics_key") != metrics_key or not (full / "per_class.csv").is_file():
            return None
        per_class = pd.read_csv(full / "per_class.csv", dtype={"dataset": str, "cls": str})
        skipped = pd.read_csv(full / "skipped.csv", dtype={"dataset": str, "cls": str})
        return per_class, skipped

    def clear(self) -> None:
        """Remove a run's files (the store's own ones only: maps, scores, manifest)."""
        self.manifest_path.unlink(missing_ok=True)
        for sub in ("maps", "vfm", FULL_PRECISION_DIR):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        for f in (self.scores_path, self.partial_scores_path):
            f.unlink(missing_ok=True)

    # reading ----------------------------------------------------------------------------------
    def scores(self) -> pd.DataFrame:
        """``scores.csv`` as a frame (columns ``SCORE_COLUMNS``)."""
        if not self.scores_path.is_file():
            raise FileNotFoundError(
                f"No scores.csv in {self.root}: the inference run did not finish. Re-run "
                f"`hxpe evaluate` (or run_protocol) to write the maps."
            )
        return pd.read_csv(self.scores_path, dtype={"image_id": str, "cls": str})

    def read_map(self, image_id: str) -> np.ndarray:
        """One image's stored map ``[H, W]`` (stored dtype)."""
        path = self.map_path(image_id)
        if not path.is_file():
            raise FileNotFoundError(f"No map for {image_id!r} in {self.root} (expected {path})")
        return np.load(path)

    def read_vfm_prompt(self, image_id: str) -> np.ndarray | None:
        """One image's VFM prompt map, or None when the model gave none."""
        path = self.vfm_path(image_id)
        return np.load(path) if path.is_file() else None

    def class_maps(self, cls: str) -> tuple[list[str], np.ndarray]:
        """The image ids and stacked float32 maps ``[N, H, W]`` of one class (scores.csv order)."""
        frame = self.scores()
        ids = frame.loc[frame["cls"] == cls, "image_id"].tolist()
        if not ids:
            raise KeyError(f"class {cls!r} has no maps in {self.root}")
        first = self.read_map(ids[0])
        out = np.empty((len(ids), *first.shape), dtype=np.float32)
        out[0] = first
        for i, image_id in enumerate(ids[1:], start=1):
            out[i] = self.read_map(image_id)
        return ids, out
