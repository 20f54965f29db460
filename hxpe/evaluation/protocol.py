"""The zero-shot protocol runner of stage 05: infer (cached maps), then per-class metrics.

For each direction (train on one dataset, test on others), variant (ablation row) and target dataset:
load the model, run it over the target's test split, stream maps to a :class:`MapStore` keyed by the
inputs (checkpoint, index, phrases, references, protocol settings) and compute per-class metrics. A
cached store whose key matches is reused without loading the model.

Sharding: ``datasets=[...]`` runs only those targets (one shard per GPU); each unit writes its own
metric part, and :func:`hxpe.evaluation.results.merge_metrics` (``hxpe evaluate --merge``) gathers
them.

Example (the shrunk demo profile, whose maps stage 05 already stored: they are reused, only the
metrics are computed again):
    >>> per_class = run_protocol(cfg)
    >>> per_class.groupby(["variant", "cls"]).size()
    variant  cls
    adaclip  bracket    8
             gravel     8
    hxpe     bracket    8
             gravel     8
    dtype: int64
    >>> sorted(per_class["metric"].unique())
    ['image_ap', 'image_auroc', 'image_f1_max', 'pixel_ap', 'pixel_aupro_anomalyclip',
     'pixel_aupro_exact', 'pixel_auroc', 'pixel_f1_max']
    >>> bool(per_class["value"].between(0, 1).all())
    True
    >>> sorted(p.name for p in cfg.layout.metrics_dir.glob("*.csv"))
    ['per_class.csv', 'per_dataset.csv', 'skipped.csv']
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from hxpe.config import Config
from hxpe.data.index import DatasetIndex, frame_sha256, load_index, select_references
from hxpe.data.torch_dataset import IndexDataset, index_batches
from hxpe.evaluation.config import Direction, EvaluationConfig
from hxpe.evaluation.maps import MapStore
from hxpe.evaluation.results import PER_CLASS_COLUMNS, merge_metrics, write_part
from hxpe.evaluation.scoring import evaluate_store
from hxpe.hashing import file_sha256
from hxpe.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from hxpe.model.inference import InferenceCaches, infer_fast, inference_caches, make_loader
from hxpe.model.loading import model_device
from hxpe.progress import progress
from hxpe.results_layout import ResultsLayout

logger = logging.getLogger(__name__)

ModelLoader = Callable[[Config, str, str, Path], nn.Module]
PhraseLoader = Callable[[Path], dict[str, str | None]]
CHECKPOINT_FILES = (WEIGHTS_FILE, CONFIG_FILE)  # what the fingerprint hashes


# --------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------


def _to_size(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, H, W]`` maps resized (bilinear) to ``size``×``size`` when needed."""
    if maps.shape[-2:] == (size, size):
        return maps
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear")[:, 0]


def infer_dataset(
    model: nn.Module,
    index: DatasetIndex,
    phrases: dict[str, str | None],
    references: dict[str, str | None] | None,
    cfg: EvaluationConfig,
    out_dir: Path,
    *,
    key: str = "",
    caches: InferenceCaches | None = None,
) -> Path:
    """Run ``model`` over the ``cfg.split`` split of ``index`` and stream maps to ``out_dir``.

    ``model(images, phrases, references, has_reference)`` must return an object with
    ``image_score [B]``, ``anomaly_map [B, H, W]`` and ``vfm_prompt [B, h, w] | None``. Maps are
    resized to ``cfg.image_size`` when needed and stored in float32 (:func:`score_unit` casts a
    float16 store after scoring it). ``key`` (the inputs' hash) goes into the store's manifest for
    the cache check. ``caches``: the fast path's phrase and reference caches (the caller keeps one
    per model across datasets; None = fresh ones). Returns ``out_dir``.
    """
    dataset = IndexDataset(
        index, cfg.image_size, split=cfg.split, phrases=phrases, references=references
    )
    if len(dataset) == 0:
        raise ValueError(
            f"{index.name} has no images in split {cfg.split!r}; check the index or evaluation.split"
        )
    loader = make_loader(dataset, cfg.batch_size, cfg.num_workers, model_device(model))
    batches = index_batches(progress(loader, desc=f"infer {index.name}", leave=False))
    store = MapStore(out_dir, "float32")
    with store.writer(key, dataset=index.name, image_size=cfg.image_size) as writer:
        # The fast path (hxpe.model.inference): batched, cached phrases/references, bf16 on GPU.
        results = infer_fast(
            model,
            batches,
            precision=cfg.precision,
            compile=cfg.compile,
            caches=caches,
            hsf_rng=cfg.hsf_rng,
        )
        for res in results:
            maps = _to_size(torch.from_numpy(res.anomaly_maps), cfg.image_size)
            for i, image_id in enumerate(res.image_ids):
                writer.add(
                    image_id,
                    maps[i],
                    cls=res.cls[i],
                    label=int(res.labels[i]),
                    image_score=float(res.image_scores[i]),
                    vfm_prompt=res.vfm_prompts[i] if res.vfm_prompts is not None else None,
                )
            writer.flush()
    logger.info("wrote %d maps of %s to %s", len(dataset), index.name, out_dir)
    return Path(out_dir)


# --------------------------------------------------------------------------------------------------
# Cache keys
# --------------------------------------------------------------------------------------------------


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def checkpoint_fingerprint(cfg: Config, direction: str, variant: str, results_dir: Path) -> str:
    """Hash of the variant's model config and of its checkpoint files (when it has any)."""
    ckpt = ResultsLayout.at(results_dir).checkpoint_dir(direction, variant)
    files = {n: file_sha256(ckpt / n) for n in CHECKPOINT_FILES if (ckpt / n).is_file()}
    return _digest({"model": cfg.model_for(variant).model_dump(mode="json"), "files": files})


def inputs_key(
    checkpoint: str,
    index: DatasetIndex,
    phrases: dict[str, str | None],
    references: dict[str, str | None] | None,
    ev: EvaluationConfig,
) -> str:
    """The cache key of one store: checkpoint, index, the split's phrases, references, settings."""
    split_ids = index.split(ev.split)["image_id"].tolist()
    return _digest(
        {
            "checkpoint": checkpoint,
            "index": frame_sha256(index.frame),
            "phrases": [phrases.get(i) for i in split_ids],
            "references": references,
            "settings": ev.model_dump(
                mode="json", include={"image_size", "split", "map_dtype", "hsf_rng"}
            ),
        }
    )


def metrics_key(index: DatasetIndex, ev: EvaluationConfig) -> str:
    """The inputs of the metrics beside the maps: the index (masks) and the metric settings."""
    fields = {"image_size", "split", "aupro_conventions", "aupro_steps", "fpr_limit"}
    return _digest(
        {"index": frame_sha256(index.frame), "settings": ev.model_dump(mode="json", include=fields)}
    )


def score_unit(
    store: MapStore, index: DatasetIndex, ev: EvaluationConfig, fresh: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class and skipped metrics of one store, always from float32 maps.

    A float32 store is scored from its maps. For ``map_dtype: float16`` a ``fresh`` store (just
    written in float32) is scored first and then cast (:meth:`MapStore.compact`); a cached float16
    store returns the metrics kept from that moment.
    """
    if ev.map_dtype == "float32":
        return evaluate_store(store, index, ev)
    mkey = metrics_key(index, ev)
    if not fresh:
        kept = store.full_precision_metrics(mkey)
        if kept is None:
            raise RuntimeError(f"{store.root}: no full-precision metrics for these settings")
        return kept
    per_class, skipped = evaluate_store(MapStore(store.root, "float32"), index, ev)
    store.compact(ev.map_dtype, per_class, skipped, mkey)
    return per_class, skipped


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


def _select(kind: str, available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    if wanted is None:
        return list(available)
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; the profile defines {list(available)}")
    return [a for a in available if a in wanted]


def _default_model_loader(cfg: Config, direction: str, variant: str, rd: Path) -> nn.Module:
    from hxpe.model.inference import model_for_evaluation

    return model_for_evaluation(cfg, direction, variant, rd)


def _default_phrase_loader(path: Path) -> dict[str, str | None]:
    from hxpe.agent import load_phrases

    return load_phrases(path)


class _Phrases:
    """The gated phrases of each reference rule, read once and only when a variant needs them."""

    def __init__(self, layout: ResultsLayout, loader: PhraseLoader) -> None:
        self.layout, self.loader = layout, loader
        self._phrases: dict[str, dict[str, str | None]] = {}

    def get(self, variant: str, rule: str) -> dict[str, str | None]:
        if rule not in self._phrases:
            path = self.layout.extractions(rule)
            if not path.is_file():
                raise FileNotFoundError(
                    f"Variant {variant!r} uses explainable prompts but {path} is missing. "
                    f"Run stage 03 first (make extract PROFILE=<profile>), or disable "
                    f"model.explain for this variant."
                )
            self._phrases[rule] = self.loader(path)
        return self._phrases[rule]


def run_protocol(
    cfg: Config,
    *,
    variants: list[str] | None = None,
    directions: list[str] | None = None,
    datasets: list[str] | None = None,
    recompute_maps: bool = False,
    results_dir: Path | None = None,
    merge: bool | None = None,
    load_model: ModelLoader | None = None,
    load_phrases: PhraseLoader | None = None,
) -> pd.DataFrame:
    """Infer and score every (direction, variant, target dataset) selected; return per-class metrics.

    ``datasets`` selects target datasets (a shard); metrics are merged into
    ``metrics/per_class.csv`` / ``per_dataset.csv`` when ``merge`` is true (default: only when no
    dataset selection was given). ``load_model`` and ``load_phrases`` replace
    ``hxpe.model.checkpoint.model_for_evaluation`` and ``hxpe.agent.load_phrases`` (tests, other models).
    """
    layout = ResultsLayout.at(results_dir) if results_dir is not None else cfg.layout
    rd = layout.root
    ev = cfg.evaluation
    by_name: dict[str, Direction] = {d.name: d for d in ev.directions}
    chosen_dirs = _select("directions", list(by_name), directions)
    chosen_vars = _select("variants", list(cfg.variants), variants)
    all_targets = sorted({t for d in ev.directions for t in d.test})
    _select("datasets", all_targets, datasets)
    loader = load_model or _default_model_loader
    phrases = _Phrases(layout, load_phrases or _default_phrase_loader)
    frames = []
    for direction in chosen_dirs:
        targets = [t for t in by_name[direction].test if datasets is None or t in datasets]
        for variant in chosen_vars:
            uses_phrases = cfg.model_for(variant).explain.enabled
            rule = cfg.reference_rule_for(variant)
            ckpt = checkpoint_fingerprint(cfg, direction, variant, rd)
            model: nn.Module | None = None
            caches: InferenceCaches | None = None  # one per model, kept across its datasets
            for target in targets:
                index = load_index(layout.index_dir(target))
                refs = select_references(index, rule)
                image_phrases = phrases.get(variant, rule) if uses_phrases else {}
                key = inputs_key(ckpt, index, image_phrases, refs, ev)
                store = MapStore(layout.maps_dir(direction, variant, target), ev.map_dtype)
                cached = store.is_complete(key) and not recompute_maps
                if cached and ev.map_dtype != "float32":
                    # float16 maps would shift the metrics: reuse them only with the float32
                    # metrics kept at inference, else infer again
                    cached = store.full_precision_metrics(metrics_key(index, ev)) is not None
                if cached:
                    logger.info("%s/%s/%s: cached maps reused", direction, variant, target)
                    store.discard_staging()  # what a killed run was writing instead
                else:
                    if model is None:
                        model = loader(cfg, direction, variant, rd)
                        if torch.cuda.is_available():
                            model = model.to("cuda")
                        caches = inference_caches(model)
                    infer_dataset(
                        model, index, image_phrases, refs, ev, store.root, key=key, caches=caches
                    )
                per_class, skipped = score_unit(store, index, ev, fresh=not cached)
                write_part(rd, direction, variant, target, per_class, skipped)
                frames.append(per_class.assign(direction=direction, variant=variant))
            del model, caches
    if merge if merge is not None else datasets is None:
        merge_metrics(rd)
    if not frames:
        return pd.DataFrame(columns=PER_CLASS_COLUMNS)
    return pd.concat(frames, ignore_index=True)[PER_CLASS_COLUMNS]
