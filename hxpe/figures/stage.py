"""Stage 06: every figure of the compendium, regenerated from the stored artifacts of stages 01-05.

:func:`make_all` writes into ``results/<profile>/figures/`` (PNG and PDF, ``figures.formats``):

* ``qualitative_<direction>_<dataset>``: image, ground truth, anomaly map, DINOv2 prompt, phrase;
* ``cards_<direction>_<dataset>``: description -> phrase -> verdict -> score for hits, misses and
  false alarms (split at the dataset's F1-max threshold);
* ``comparison_<direction>_<dataset>``: HXPE vs learnable-only vs WinCLIP-style maps
  (:mod:`hxpe.figures.selection` says how the variants are chosen);
* ``metrics_per_dataset``: bars per target dataset and metric; ``ablation``: every variant × metric;
* ``word_importance`` (+ ``word_importance.csv``): leave-one-word-out on a few images, the only
  inference of this stage (:func:`word_importance`).

A missing optional artifact (no DINOv2 prompts, a variant without maps, no metrics, no checkpoint)
skips that figure or panel with a logged note. Demo-profile figures carry a visible note.

Example (the shrunk demo profile after stage 05, PNG only):
    >>> from hxpe.figures.stage import make_all
    >>> written = make_all(cfg)
    >>> [p.name for p in written]
    ['qualitative_aux_to_target_demo_target.png', 'cards_aux_to_target_demo_target.png',
     'comparison_aux_to_target_demo_target.png', 'metrics_per_dataset.png', 'ablation.png',
     'word_importance.png', 'word_importance.csv']
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from hxpe.config import Config
from hxpe.data.index import select_references
from hxpe.data.torch_dataset import load_image
from hxpe.figures.artifacts import Artifacts, MissingArtifact, Sample
from hxpe.figures.metric_plots import ablation_heatmap, dataset_bars
from hxpe.figures.panels import cards_figure, comparison_figure, qualitative_grid
from hxpe.figures.selection import comparison_roles, round_robin
from hxpe.figures.style import save_figure
from hxpe.figures.words import word_figure, word_importance

log = logging.getLogger(__name__)

ModelLoader = Callable[[Config, str, str, Path], nn.Module]

__all__ = ["Artifacts", "MissingArtifact", "make_all", "word_importance", "word_importance_rows"]


def _save(cfg: Config, name: str, out_dir: Path, build: Callable[[], Figure | None]) -> list[Path]:
    """Build and save one figure; a missing artifact skips it with a note."""
    try:
        fig = build()
    except MissingArtifact as err:
        log.info("figures: skipped %s: %s", name, err)
        return []
    if fig is None:
        log.info("figures: skipped %s (nothing to show; see the notes above)", name)
        return []
    return save_figure(fig, cfg, name, out_dir)


def _default_loader(cfg: Config, direction: str, variant: str, results_dir: Path) -> nn.Module:
    from hxpe.model.inference import model_for_evaluation

    return model_for_evaluation(cfg, direction, variant, results_dir)


def _word_examples(art: Artifacts) -> tuple[str, list[Sample]]:
    """A direction and up to ``figures.word_examples`` anomalous images with a gated phrase."""
    variant = art.cfg.main_variant
    for direction, dataset in art.targets():
        if not art.has_maps(direction, variant, dataset):
            continue
        scores = art.scores(direction, variant, dataset)
        with_phrase = scores[
            (scores["label"] == 1)
            & scores["image_id"].map(lambda i: art.explanation(i).gated_phrase is not None)
        ]
        chosen = round_robin(with_phrase, art.cfg.figures.word_examples)
        if not chosen.empty:
            return direction, [
                art.sample(direction, variant, dataset, i) for i in chosen["image_id"]
            ]
    raise MissingArtifact(
        f"no anomalous target image of variant {variant!r} has stored maps and a gated phrase "
        f"(stages 03 and 05 write them)"
    )


def word_importance_rows(
    art: Artifacts, load_model: ModelLoader | None = None
) -> list[tuple[Sample, str, list[tuple[str, float]]]]:
    """Leave-one-word-out on the chosen images with the main variant's model."""
    cfg = art.cfg
    if not cfg.model_for(cfg.main_variant).explain.enabled:
        raise MissingArtifact(f"variant {cfg.main_variant!r} does not use explainable phrases")
    direction, samples = _word_examples(art)
    try:
        model = (load_model or _default_loader)(cfg, direction, cfg.main_variant, art.root)
    except FileNotFoundError as err:
        raise MissingArtifact(str(err)) from err
    if torch.cuda.is_available():
        model = model.to("cuda")
    rows = []
    for s in samples:
        index = art.index(s.dataset)
        ref_id = select_references(index, cfg.data.reference_rule).get(s.cls)
        ref = None
        if ref_id is not None:
            ref = load_image(index.abs_path(index.row(ref_id)["image"]), art.image_size)
        image = torch.from_numpy(s.image).permute(2, 0, 1).contiguous()
        phrase = s.explanation.gated_phrase or ""
        rows.append((s, phrase, word_importance(model, image, phrase, ref)))
    return rows


def _word_outputs(art: Artifacts, out_dir: Path, load_model: ModelLoader | None) -> list[Path]:
    try:
        rows = word_importance_rows(art, load_model)
    except MissingArtifact as err:
        log.info("figures: skipped word_importance: %s", err)
        return []
    table = pd.DataFrame(
        [
            {"image_id": s.image_id, "phrase": p, "position": k, "word": w, "delta_score": v}
            for s, p, values in rows
            for k, (w, v) in enumerate(values)
        ]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "word_importance.csv"
    table.to_csv(csv, index=False, lineterminator="\n")
    title = f"Leave one word out: HXPE ({art.cfg.main_variant}); red raises the anomaly score"
    return [*save_figure(word_figure(rows, title), art.cfg, "word_importance", out_dir), csv]


def make_all(
    cfg: Config,
    results_dir: Path | None = None,
    *,
    load_model: ModelLoader | None = None,
) -> list[Path]:
    """Regenerate every figure of the profile from its stored artifacts; return the files written.

    ``load_model(cfg, direction, variant, results_dir)`` replaces
    :func:`hxpe.model.checkpoint.model_for_evaluation` for the leave-one-word-out figure.
    """
    art = Artifacts(cfg, results_dir)
    out = art.layout.figures_dir
    roles = comparison_roles(cfg)
    written: list[Path] = []
    for direction, dataset in art.targets():
        tag = f"{direction}_{dataset}"
        written += _save(
            cfg,
            f"qualitative_{tag}",
            out,
            lambda d=direction, t=dataset: qualitative_grid(art, d, t),
        )
        written += _save(
            cfg, f"cards_{tag}", out, lambda d=direction, t=dataset: cards_figure(art, d, t)
        )
        written += _save(
            cfg,
            f"comparison_{tag}",
            out,
            lambda d=direction, t=dataset: comparison_figure(art, d, t, roles),
        )
    written += _save(
        cfg, "metrics_per_dataset", out, lambda: dataset_bars(art.metrics()[1], cfg, roles)
    )
    written += _save(cfg, "ablation", out, lambda: ablation_heatmap(art.metrics()[1], cfg))
    written += _word_outputs(art, out, load_model)
    log.info("figures: wrote %d files to %s", len(written), out)
    return written
