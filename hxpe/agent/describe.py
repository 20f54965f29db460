"""Stage 02: the VLM (or the classical describer) writes what differs between each image and the
normal reference of its class; results go to an append-only cache (``agent/descriptions.jsonl``).

Example (the demo profile's classical describer on planted defects):
    >>> import tempfile
    >>> from hxpe.data.fixtures import planted_index
    >>> from hxpe.config import load_config
    >>> cfg = load_config("notebooks/params/demo.yaml")
    >>> index = planted_index(tempfile.mkdtemp(), n_good=1)
    >>> cache = Path(tempfile.mkdtemp()) / "descriptions.jsonl"
    >>> report = run_describe([index], cfg.agent, cache)
    >>> report.total, report.done, report.failed
    (6, 6, 0)
    >>> run_describe([index], cfg.agent, cache).cached  # a rerun reads the cache
    6
    >>> load_descriptions(cache)[["image_id", "status"]].values[0].tolist()
    ['planted/tile/test/good/000', 'ok']
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from hxpe.agent.backend_base import (
    Describer,
    DescribeRequest,
    engine_settings,
    make_describer,
)
from hxpe.agent.cache import JsonlCache, Shard, content_hash, in_shard, read_records, shard_files
from hxpe.agent.config import AgentConfig
from hxpe.agent.parsing import check_description
from hxpe.agent.runner import (
    Outcome,
    StageReport,
    finish,
    replay_stage,
    run_stage,
    settings_hash,
    stage_settings,
)
from hxpe.agent.templates import PromptTemplate, load_template
from hxpe.data.images import read_image
from hxpe.data.index import DatasetIndex, select_references
from hxpe.hashing import file_sha256

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


REPLAY_ON = ("image_id", "image_sha256", "reference_sha256", "model_id", "template_id")
"""The fields a replayed description shares with the one it stands for (:mod:`hxpe.agent.replay`)."""


def _open_rgb(path: Path) -> Image.Image:
    """The project's one image reader (:mod:`hxpe.data.images`), as evaluation and predict use."""
    return read_image(path)


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
    (LEDGER.md §4 r1); other rules compare it with its class's reference
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

    def about(it: DescribeItem) -> dict[str, Any]:
        """A record's first fields: the image, its reference, the model and the template."""
        return {
            "image_id": it.image_id,
            "dataset": it.dataset,
            "cls": it.cls,
            "reference_id": it.reference_id,
            "reference_rule": reference_rule,
            "image_sha256": it.image_sha256,
            "reference_sha256": it.reference_sha256,
            "model_id": dcfg.model_id,
            "template_id": template.id,
        }

    if replay:
        replay_stage(
            [about(it) for it in items], REPLAY_ON, dcfg.options, cache=cache, report=report
        )
        return finish(report, started)

    def fields(it: DescribeItem, out: Outcome[str]) -> dict[str, Any]:
        return {**about(it), "text": out.value if out.ok else out.raw, **out.record_fields()}

    run_stage(
        [(_key(it, digest, template), it) for it in items],
        cache=cache,
        report=report,
        cfg=dcfg,
        settings=settings,
        backend=lambda: (describer or make_describer(dcfg)).describe,
        requests=lambda batch: _requests(batch, template),
        check=check_description,
        fields=fields,
    )
    return finish(report, started)


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
