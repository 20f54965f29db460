"""Read-only access to what stages 01-05 stored under ``results/<profile>/``, for figures and the
explorer: indexes, the agent's descriptions and extractions, map stores and metric tables.

Every accessor raises :class:`MissingArtifact` (with the path and the stage that writes it) when an
optional artifact is absent, so that callers can skip one panel and go on.

Example (the shrunk demo profile after stage 05; its test images are 64 px):
    >>> art = Artifacts(cfg)
    >>> art.targets()
    [('aux_to_target', 'demo_target')]
    >>> scores = art.scores("aux_to_target", "hxpe", "demo_target")
    >>> image_id = scores.loc[scores["label"] == 1, "image_id"].iloc[0]
    >>> image_id
    'demo_target/bracket/test/.../000'
    >>> sample = art.sample("aux_to_target", "hxpe", "demo_target", image_id)
    >>> sample.image.shape, sample.mask.shape, sample.anomaly_map.shape, sample.vfm_prompt.shape
    ((64, 64, 3), (64, 64), (64, 64), (8, 8))
    >>> sample.explanation.verdict, sample.explanation.phrase
    (True, '...')
    >>> art.store("aux_to_target", "winclip", "demo_target")
    Traceback (most recent call last):
    ...
    hxpe.figures.artifacts.MissingArtifact: no stored maps of variant 'winclip' for
    aux_to_target/demo_target (.../scores.csv is missing; stage 05 writes it: make evaluate)
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hxpe.config import Config
from hxpe.data.index import DatasetIndex, load_index
from hxpe.data.torch_dataset import load_image, load_mask
from hxpe.evaluation.maps import MapStore
from hxpe.evaluation.results import load_metrics
from hxpe.results_layout import ResultsLayout

log = logging.getLogger(__name__)


class MissingArtifact(LookupError):
    """An optional stored artifact is absent (the message says which and how to make it)."""


@dataclass(frozen=True)
class Explanation:
    """The agent's chain for one image: VLM description -> phrase -> verdict."""

    description: str | None = None
    phrase: str | None = None
    verdict: bool | None = None
    status: str | None = None

    @property
    def gated_phrase(self) -> str | None:
        """The phrase the model receives (None when judged normal or failed)."""
        return self.phrase if (self.status == "ok" and self.verdict and self.phrase) else None

    def verdict_text(self) -> str:
        if self.status is None:
            return "no agent record"
        if self.status != "ok":
            return "extraction failed: generic prompt"
        return "anomalous: phrase used" if self.verdict else "normal: no phrase (gate)"


@dataclass
class Sample:
    """One test image with everything stored about it, at the protocol resolution."""

    image_id: str
    dataset: str
    cls: str
    label: int
    defect_type: str
    image: np.ndarray  # [S, S, 3] float in [0, 1]
    mask: np.ndarray  # [S, S] {0, 1}
    anomaly_map: np.ndarray | None  # [S, S] float32
    vfm_prompt: np.ndarray | None  # [h, w] float32
    score: float | None
    explanation: Explanation


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def _flag(value: object) -> bool | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return bool(value)


class Artifacts:
    """Lazy, cached readers of one profile's results directory."""

    def __init__(self, cfg: Config, results_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.layout = ResultsLayout.at(results_dir) if results_dir is not None else cfg.layout
        self.root = self.layout.root
        self.image_size = cfg.evaluation.image_size
        self._index = functools.cache(self._load_index)
        self._scores = functools.cache(self._load_scores)

    # targets ----------------------------------------------------------------------------------
    def targets(self) -> list[tuple[str, str]]:
        """``(direction, target dataset)`` pairs of the protocol, in config order."""
        return [(d.name, t) for d in self.cfg.evaluation.directions for t in d.test]

    def directions(self) -> list[str]:
        return [d.name for d in self.cfg.evaluation.directions]

    # index ------------------------------------------------------------------------------------
    def _load_index(self, dataset: str) -> DatasetIndex:
        try:
            return load_index(self.layout.index_dir(dataset))
        except FileNotFoundError as err:
            raise MissingArtifact(str(err)) from err

    def index(self, dataset: str) -> DatasetIndex:
        return self._index(dataset)

    # maps -------------------------------------------------------------------------------------
    def store(self, direction: str, variant: str, dataset: str) -> MapStore:
        """The map store of one unit; :class:`MissingArtifact` when its scores.csv is absent."""
        store = MapStore(self.layout.maps_dir(direction, variant, dataset))
        if not store.scores_path.is_file():
            raise MissingArtifact(
                f"no stored maps of variant {variant!r} for {direction}/{dataset} "
                f"({store.scores_path} is missing; stage 05 writes it: make evaluate)"
            )
        return store

    def has_maps(self, direction: str, variant: str, dataset: str) -> bool:
        return MapStore(self.layout.maps_dir(direction, variant, dataset)).scores_path.is_file()

    def _load_scores(self, direction: str, variant: str, dataset: str) -> pd.DataFrame:
        scores = self.store(direction, variant, dataset).scores()
        try:
            meta = self.index(dataset).frame[["image_id", "defect_type", "split"]]
            scores = scores.merge(meta, on="image_id", how="left")
        except MissingArtifact:
            scores = scores.assign(defect_type="", split="")
        scores["defect_type"] = scores["defect_type"].fillna("").astype(str)
        return scores.sort_values("image_id", kind="stable").reset_index(drop=True)

    def scores(self, direction: str, variant: str, dataset: str) -> pd.DataFrame:
        """``scores.csv`` of one unit plus ``defect_type``, sorted by image id."""
        return self._scores(direction, variant, dataset)

    # agent ------------------------------------------------------------------------------------
    @functools.cached_property
    def explanations(self) -> dict[str, Explanation]:
        """image_id -> :class:`Explanation`; empty (with a note) when the agent files are absent."""
        from hxpe.agent import load_descriptions, load_extractions

        descriptions, extractions = self.layout.agent_caches()
        texts: dict[str, str | None] = {}
        if descriptions.is_file():
            frame = load_descriptions(descriptions)
            texts = {r.image_id: _text(r.text) for r in frame.itertuples(index=False)}
        else:
            log.info("figures: no %s; explanations show no VLM description", descriptions.parent)
        out = {i: Explanation(description=t) for i, t in texts.items()}
        if extractions.is_file():
            frame = load_extractions(extractions)
            for r in frame.itertuples(index=False):
                out[r.image_id] = Explanation(
                    description=texts.get(r.image_id),
                    phrase=_text(r.phrase) or None,
                    verdict=_flag(r.verdict),
                    status=_text(r.status),
                )
        else:
            log.info(
                "figures: no %s in %s; no phrases or verdicts shown",
                extractions.name,
                extractions.parent,
            )
        return out

    def explanation(self, image_id: str) -> Explanation:
        return self.explanations.get(image_id, Explanation())

    # samples ----------------------------------------------------------------------------------
    def sample(self, direction: str, variant: str, dataset: str, image_id: str) -> Sample:
        """One image with its mask, stored map, DINOv2 prompt, score and explanation."""
        index = self.index(dataset)
        row = index.row(image_id)
        image = load_image(index.abs_path(row["image"]), self.image_size)
        mask_path = index.abs_path(row["mask"]) if row["mask"] else None
        mask = load_mask(mask_path, self.image_size)[0].numpy()
        amap = vfm = score = None
        if self.has_maps(direction, variant, dataset):
            store = self.store(direction, variant, dataset)
            scores = self.scores(direction, variant, dataset)
            hit = scores[scores["image_id"] == image_id]
            if not hit.empty:
                amap = store.read_map(image_id).astype(np.float32)
                vfm_raw = store.read_vfm_prompt(image_id)
                vfm = None if vfm_raw is None else vfm_raw.astype(np.float32)
                score = float(hit.iloc[0]["image_score"])
        return Sample(
            image_id=image_id,
            dataset=dataset,
            cls=str(row["cls"]),
            label=int(row["label"]),
            defect_type=str(row["defect_type"]),
            image=image.permute(1, 2, 0).numpy(),
            mask=mask,
            anomaly_map=amap,
            vfm_prompt=vfm,
            score=score,
            explanation=self.explanation(image_id),
        )

    # metrics ----------------------------------------------------------------------------------
    def metrics(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(per_class, per_dataset)`` long tables of stage 05."""
        paths = [self.layout.metrics_file(n) for n in ("per_class.csv", "per_dataset.csv")]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise MissingArtifact(
                f"{missing[0]} is missing; stage 05 writes it (make evaluate PROFILE={self.cfg.profile})"
            )
        return load_metrics(self.root)
