"""Stage 02: the VLM (or the classical describer) writes what differs between each image and the
normal reference of its class; results go to an append-only cache (``agent/descriptions.jsonl``).

Example:
    >>> from hxpe.config import load_config  # doctest: +SKIP
    >>> cfg = load_config("notebooks/params/demo.yaml")  # doctest: +SKIP
    >>> idx = load_index(cfg.results_dir / "index" / "demo_target")  # doctest: +SKIP
    >>> report = run_describe([idx], cfg.agent, cfg.results_dir / "agent" / "descriptions.jsonl")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from hxpe.agent.backend_base import (
    Describer,
    DescribeRequest,
    engine_settings,
    make_describer,
)
from hxpe.agent.cache import JsonlCache, Shard, content_hash, in_shard, read_records, shard_files
from hxpe.agent.config import AgentConfig
from hxpe.agent.parsing import check_description
from hxpe.agent.replay import replay_records, replay_source
from hxpe.agent.runner import (
    StageReport,
    provenance,
    run_with_retries,
    settings_hash,
    stage_settings,
    timing,
)
from hxpe.agent.templates import PromptTemplate, load_template
from hxpe.config import file_sha256
from hxpe.data.index import DatasetIndex, select_references

log = logging.getLogger(__name__)


class DescribeReport(StageReport):
    """Report of :func:`run_describe`."""


@dataclass(frozen=True)
class DescribeItem:
    """One image to describe, with everything its cache key needs."""

    image_id: str
    dataset: str
    cls: str
    image_path: Path
    image_sha256: str
    reference_id: str | None
    reference_path: Path | None
    reference_sha256: str | None


def _items(
    indexes: list[DatasetIndex], splits: list[str], rule: str, shard: Shard, with_reference: bool
) -> list[DescribeItem]:
    items: list[DescribeItem] = []
    ref_hashes: dict[Path, str] = {}
    for index in indexes:
        refs = select_references(index, rule if with_reference else "none")
        rows = index.frame[index.frame["split"].isin(splits)]
        for row in rows.itertuples(index=False):
            if not in_shard(row.image_id, shard):
                continue
            ref_id = refs.get(row.cls)
            if with_reference and ref_id is None:
                raise ValueError(
                    f"class {row.cls!r} of dataset {index.name!r} has no normal image to use as a "
                    f"reference (rule {rule!r}); use the no-reference template describe_noref_v1."
                )
            ref_path = index.abs_path(index.row(ref_id)["image"]) if ref_id else None
            if ref_path is not None and ref_path not in ref_hashes:
                ref_hashes[ref_path] = file_sha256(ref_path)
            path = index.abs_path(row.image)
            items.append(
                DescribeItem(
                    image_id=row.image_id,
                    dataset=row.dataset,
                    cls=row.cls,
                    image_path=path,
                    image_sha256=file_sha256(path),
                    reference_id=ref_id,
                    reference_path=ref_path,
                    reference_sha256=ref_hashes.get(ref_path) if ref_path else None,
                )
            )
    return sorted(items, key=lambda it: it.image_id)


def _key(item: DescribeItem, settings_digest: str, template: PromptTemplate) -> str:
    return content_hash(
        {
            "settings": settings_digest,
            "image_id": item.image_id,
            "image_sha256": item.image_sha256,
            "reference_sha256": item.reference_sha256,
            "prompt_sha256": content_hash(template.render(class_name=item.cls)),
        }
    )


def _replay_match(rec: dict[str, Any]) -> tuple[Any, ...]:
    return (
        rec["image_id"],
        rec["image_sha256"],
        rec["reference_sha256"],
        rec["model_id"],
        rec["template_id"],
    )


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _requests(items: list[DescribeItem], template: PromptTemplate) -> list[DescribeRequest]:
    refs: dict[Path, Image.Image] = {}
    out = []
    for it in items:
        ref = None
        if it.reference_path is not None:
            ref = refs.setdefault(it.reference_path, _open_rgb(it.reference_path))
        out.append(
            DescribeRequest(
                image_id=it.image_id,
                class_name=it.cls,
                prompt=template.render(class_name=it.cls),
                image=_open_rgb(it.image_path),
                reference=ref,
            )
        )
    return out


def run_describe(
    indexes: list[DatasetIndex] | DatasetIndex,
    cfg: AgentConfig,
    cache_path: Path,
    *,
    reference_rule: str = "first_normal_train",
    shard: Shard = (0, 1),
    describer: Describer | None = None,
) -> DescribeReport:
    """Describe every image of ``cfg.splits`` not yet in the cache; returns counts and timing.

    ``reference_rule`` 'none' describes each image alone with ``agent.describe.noref_template``
    (method.md §4 row 1); other rules compare it with its class's reference
    (``agent.describe.template``). Template and reference enter the cache key.

    ``describer`` replaces the configured backend (e.g. one already loaded in a notebook); it must
    match ``cfg.describe`` because the cache key is computed from the config.
    """
    started = time.perf_counter()
    indexes = [indexes] if isinstance(indexes, DatasetIndex) else list(indexes)
    dcfg = cfg.describe
    key = "noref_template" if reference_rule == "none" else "template"
    template = load_template(getattr(dcfg, key))
    if template.stage != "describe":
        raise ValueError(
            f"agent.describe.{key} {getattr(dcfg, key)!r} is a {template.stage} template"
        )
    if reference_rule == "none" and template.needs_reference:
        raise ValueError(
            f"template {template.id!r} compares with a reference but reference_rule is 'none'; "
            f"set agent.describe.noref_template: describe_noref_v1"
        )
    items = _items(indexes, cfg.splits, reference_rule, shard, template.needs_reference)
    replay = dcfg.backend == "replay"
    engine = {} if replay else engine_settings(dcfg)
    settings = stage_settings("describe", dcfg, template, engine)
    digest = settings_hash(settings)
    cache = JsonlCache(cache_path, shard)
    report = DescribeReport("describe", cache.write_path, digest, total=len(items))

    if replay:
        wanted = [
            (
                it.image_id,
                (it.image_id, it.image_sha256, it.reference_sha256, dcfg.model_id, template.id),
            )
            for it in items
        ]
        found = replay_records(wanted, replay_source(dcfg.options, cache_path), _replay_match)
        known = cache.keys()
        cache.append(r for r in found if r["key"] not in known)
        for rec in found:
            report.cached += 1
            report.count_failure(rec.get("error"))
        report.elapsed_s = time.perf_counter() - started
        log.info("%s", report)
        return report

    known = {r["key"]: r for r in cache.records()}
    keyed = [(_key(it, digest, template), it) for it in items]
    pending = [(k, it) for k, it in keyed if k not in known]
    for k, _ in keyed:
        if k in known:
            report.cached += 1
            report.count_failure(known[k].get("error"))
    if pending:
        describer = describer or make_describer(dcfg)
        prov = provenance(settings)
        bar = tqdm(total=len(pending), desc="describe", unit="img")
        for start in range(0, len(pending), dcfg.batch_size):
            batch = pending[start : start + dcfg.batch_size]
            requests = _requests([it for _, it in batch], template)
            outcomes = run_with_retries(requests, describer.describe, check_description, dcfg)
            records = []
            for (key, it), out in zip(batch, outcomes, strict=True):
                records.append(
                    {
                        "key": key,
                        "settings_hash": digest,
                        "image_id": it.image_id,
                        "dataset": it.dataset,
                        "cls": it.cls,
                        "reference_id": it.reference_id,
                        "reference_rule": reference_rule,
                        "image_sha256": it.image_sha256,
                        "reference_sha256": it.reference_sha256,
                        "model_id": dcfg.model_id,
                        "template_id": template.id,
                        "text": out.value if out.ok else out.raw,
                        "status": "ok" if out.ok else "failed",
                        "error": out.error,
                        "attempts": out.attempts,
                        "provenance": prov,
                        "timing": timing(out.seconds),
                    }
                )
                report.count_failure(out.error)
                report.done += int(out.ok)
            cache.append(records)
            bar.update(len(batch))
        bar.close()
    report.elapsed_s = time.perf_counter() - started
    log.info("%s", report)
    return report


def latest_per_image(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per ``image_id``: its newest record (the last one in file order)."""
    if not records:
        return pd.DataFrame(columns=["image_id", "key", "status"])
    frame = pd.DataFrame(records)
    return (
        frame.drop_duplicates("image_id", keep="last")
        .sort_values("image_id")
        .reset_index(drop=True)
    )


def load_records(path: Path, *, settings_hash: str | None = None) -> pd.DataFrame:
    """Records of a stage cache as a frame (newest per image; optionally only one settings hash)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; run the stage first (make describe/extract)"
        )
    unmerged = shard_files(path)
    if unmerged:
        log.warning(
            "%s has %d unmerged shard file(s) beside it; run `hxpe describe --merge` "
            "(or `hxpe extract --merge`) to include them",
            path,
            len(unmerged),
        )
    records = read_records(path)
    if settings_hash is not None:
        records = [r for r in records if r.get("settings_hash") == settings_hash]
    return latest_per_image(records)


def load_descriptions(path: Path, *, settings_hash: str | None = None) -> pd.DataFrame:
    """The descriptions cache as a frame, one row per image (columns as in the records)."""
    return load_records(path, settings_hash=settings_hash)
