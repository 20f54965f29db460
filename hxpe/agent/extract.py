"""Stage 03: the LLM (or the rule extractor) turns each description into an :class:`Extraction`,
the anti-false-alarm rule gives the verdict, and the CLIP phrase is kept within its token budget.

Example (the demo profile: classical describer, rule extractor):
    >>> import tempfile
    >>> from hxpe.agent.describe import run_describe
    >>> from hxpe.data.fixtures import planted_index
    >>> from hxpe.config import load_config
    >>> cfg = load_config("notebooks/params/demo.yaml")
    >>> agent = Path(tempfile.mkdtemp())
    >>> index = planted_index(tempfile.mkdtemp(), n_good=1)
    >>> _ = run_describe(index, cfg.agent, agent / "descriptions.jsonl")
    >>> report = run_extract(agent / "descriptions.jsonl", cfg.agent, agent / "extractions.jsonl")
    >>> report.done, report.failed
    (6, 0)
    >>> phrases = load_phrases(agent / "extractions.jsonl")
    >>> phrases["planted/tile/test/good/000"], phrases["planted/tile/test/spot/000"]
    (None, 'small red contamination on the lower right')
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from hxpe.agent.backend_base import Extractor, ExtractRequest, engine_settings, make_extractor
from hxpe.agent.cache import JsonlCache, Shard, content_hash, in_shard
from hxpe.agent.config import AgentConfig
from hxpe.agent.describe import load_records
from hxpe.agent.parsing import parse_extraction
from hxpe.agent.phrase import CLIP_TOKENIZER_MODEL as DEFAULT
from hxpe.agent.phrase import count_clip_tokens, fit_phrase
from hxpe.agent.runner import (
    Outcome,
    StageReport,
    finish,
    replay_stage,
    run_stage,
    run_with_retries,
    settings_hash,
    stage_settings,
)
from hxpe.agent.schema import Extraction, verdict, vlm_says_no_anomaly
from hxpe.agent.templates import load_template
from hxpe.model.clip_tower import ClipConfig
from hxpe.results_layout import ResultsLayout

log = logging.getLogger(__name__)

RAW_CHARS = 2000  # how much of a failed raw output a record keeps


class ExtractReport(StageReport):
    """Report of :func:`run_extract` (``skipped``: images whose description failed)."""


REPLAY_ON = ("image_id", "description_key", "model_id", "template_id")
"""The fields a replayed extraction shares with the one it stands for (:mod:`hxpe.agent.replay`)."""


def _fields(
    out: Outcome[Extraction], description: str, cfg: AgentConfig, clip: ClipConfig | None
) -> dict[str, Any]:
    """The record's judgement fields (empty and not anomalous when extraction failed); the
    phrase is cut to ``max_phrase_tokens`` tokens of ``clip``'s tokenizer."""
    if not out.ok or out.value is None:
        return {
            "anomaly": None,
            "defect_type": "",
            "location": "",
            "appearance": "",
            "phrase": "",
            "phrase_tokens": 0,
            "phrase_truncated": False,
            "vlm_no_anomaly": vlm_says_no_anomaly(description),
            "verdict": None,
            "raw": out.raw[:RAW_CHARS],
        }
    rec = out.value
    phrase, cut = (
        fit_phrase(rec.phrase, cfg.extract.max_phrase_tokens, clip) if rec.phrase else ("", False)
    )
    return {
        "anomaly": rec.anomaly,
        "defect_type": rec.defect_type,
        "location": rec.location,
        "appearance": rec.appearance,
        "phrase": phrase,
        "phrase_tokens": count_clip_tokens(phrase, clip) if phrase else 0,
        "phrase_truncated": cut,
        "vlm_no_anomaly": vlm_says_no_anomaly(description),
        "verdict": verdict(rec.anomaly, description, cfg.anti_false_alarm),
        "raw": out.raw[:RAW_CHARS],
    }


def extract_one(
    description: str,
    cfg: AgentConfig,
    *,
    extractor: Extractor | None = None,
    clip: ClipConfig | None = None,
) -> dict[str, Any]:
    """Extract and judge one description outside the cache (``hxpe predict``, notebooks).

    ``clip`` (``model.clip``) names the CLIP whose tokenizer measures the phrase budget.

    Returns the same fields as a cache record (``anomaly``, ``phrase``, ``verdict``, ...) plus
    ``status`` and ``error``; the phrase is already cut to ``max_phrase_tokens``.
    """
    ecfg = cfg.extract
    template = load_template(ecfg.template)
    request = ExtractRequest(
        image_id="single",
        description=description,
        prompt=template.render(description=description),
        system=template.system,
    )
    extractor = extractor or make_extractor(ecfg)
    out = run_with_retries([request], extractor.extract, parse_extraction, ecfg)[0]
    return {
        "status": "ok" if out.ok else "failed",
        "error": out.error,
        **_fields(out, description, cfg, clip),
    }


def run_extract(
    descriptions_path: Path,
    cfg: AgentConfig,
    cache_path: Path,
    *,
    shard: Shard = (0, 1),
    extractor: Extractor | None = None,
    clip: ClipConfig | None = None,
) -> ExtractReport:
    """Extract and judge every successful description not yet in the cache.

    Descriptions are the newest per image in ``descriptions_path``; failed ones are skipped (counted
    in ``report.skipped``). ``extractor`` replaces the configured backend. The phrase budget is
    counted in tokens of ``clip``'s tokenizer (``model.clip``; None = the paper's CLIP), which is
    part of the cache key.
    """
    started = time.perf_counter()
    ecfg = cfg.extract
    template = load_template(ecfg.template)
    if template.stage != "extract":
        raise ValueError(f"agent.extract.template {ecfg.template!r} is a {template.stage} template")
    frame = load_records(descriptions_path)
    frame = frame[[in_shard(i, shard) for i in frame["image_id"]]] if len(frame) else frame
    ok = frame[frame["status"] == "ok"] if len(frame) else frame
    replay = ecfg.backend == "replay"
    settings = stage_settings(
        "extract",
        ecfg,
        template,
        {} if replay else engine_settings(ecfg),
        anti_false_alarm=cfg.anti_false_alarm,
        max_phrase_tokens=ecfg.max_phrase_tokens,
        **({"phrase_tokenizer": clip.model_name} if clip and clip.model_name != DEFAULT else {}),
    )
    digest = settings_hash(settings)
    cache = JsonlCache(cache_path, shard)
    report = ExtractReport("extract", cache.write_path, digest, total=len(ok))
    report.skipped = len(frame) - len(ok)
    rows = list(ok.itertuples(index=False))

    def about(r: Any) -> dict[str, Any]:
        """A record's first fields: the description, its image, the model and the template."""
        return {
            "description_key": r.key,
            "image_id": r.image_id,
            "dataset": r.dataset,
            "cls": r.cls,
            "model_id": ecfg.model_id,
            "template_id": template.id,
        }

    if replay:
        replay_stage([about(r) for r in rows], REPLAY_ON, ecfg.options, cache=cache, report=report)
        return finish(report, started)

    def requests(batch: list[Any]) -> list[ExtractRequest]:
        return [
            ExtractRequest(
                image_id=r.image_id,
                description=r.text,
                prompt=template.render(description=r.text),
                system=template.system,
            )
            for r in batch
        ]

    def fields(r: Any, out: Outcome[Extraction]) -> dict[str, Any]:
        return {**about(r), **out.record_fields(), **_fields(out, r.text, cfg, clip)}

    run_stage(
        [(content_hash({"settings": digest, "description_key": r.key}), r) for r in rows],
        cache=cache,
        report=report,
        cfg=ecfg,
        settings=settings,
        backend=lambda: (extractor or make_extractor(ecfg)).extract,
        requests=requests,
        check=parse_extraction,
        fields=fields,
    )
    # An empty cache file still marks the stage as run (e.g. every description failed upstream).
    cache.write_path.parent.mkdir(parents=True, exist_ok=True)
    cache.write_path.touch(exist_ok=True)
    return finish(report, started)


def load_extractions(path: Path, *, settings_hash: str | None = None) -> pd.DataFrame:
    """The extractions cache as a frame, one row per image (its newest record)."""
    return load_records(path, settings_hash=settings_hash)


def load_phrases(extractions_path: Path) -> dict[str, str | None]:
    """``image_id -> phrase``, gated by the verdict: ``None`` when judged normal or failed."""
    frame = load_extractions(extractions_path)
    out: dict[str, str | None] = {}
    for row in frame.itertuples(index=False):
        usable = row.status == "ok" and bool(row.verdict) and bool(row.phrase)
        out[row.image_id] = row.phrase if usable else None
    return out


def phrases_for_rule(results_dir: Path, rule: str) -> dict[str, str | None]:
    """The gated phrases (image_id -> phrase or None) that stage 03 wrote for ``rule`` into a
    profile's results directory."""
    extractions = ResultsLayout.at(results_dir).extractions(rule)
    if not extractions.is_file():
        raise FileNotFoundError(
            f"{extractions} is missing: stages 02-03 have not run for reference rule {rule!r}. "
            f"Run them first (make extract PROFILE=<profile>)."
        )
    return load_phrases(extractions)
