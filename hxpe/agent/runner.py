"""What both stages share: the stage skeleton (cache, batches, records), the bounded retry loop,
producer provenance and the run report.

Engine errors (the backend raised instead of answering) are never cached: they say nothing about the
input, and after an out-of-memory error a dead engine fails every item at once. Such items are left
out of the cache, so the next run retries them; a batch in which every item failed that way stops
the stage with :class:`EngineFailure`, after the records of the earlier batches were written.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from hxpe.agent.backend_base import Generation, Sampling
from hxpe.agent.cache import JsonlCache, content_hash
from hxpe.agent.config import DescribeConfig, ExtractConfig
from hxpe.agent.parsing import OutputError
from hxpe.agent.replay import replay_records, replay_source
from hxpe.agent.templates import PromptTemplate
from hxpe.progress import progress
from hxpe.versions import software_versions

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Val = TypeVar("Val")
Report = TypeVar("Report", bound="StageReport")


@dataclass
class Outcome(Generic[Val]):
    """The result of one request after all attempts."""

    value: Val | None
    raw: str
    error: str | None
    attempts: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None

    def record_fields(self) -> dict[str, Any]:
        """What every cache record says of its request's outcome: status, error, attempts."""
        return {
            "status": "ok" if self.ok else "failed",
            "error": self.error,
            "attempts": self.attempts,
        }


ENGINE_ERROR = "engine_error"
# Consecutive single-item failures after which the per-item retry of a failed batch stops calling
# the backend (the engine is presumed dead; the remaining items fail without a call).
DEAD_AFTER = 3


class EngineFailure(RuntimeError):
    """The backend failed on every item of a batch: the stage stops, and nothing of it was cached."""


def _engine_error(err: BaseException) -> OutputError:
    return OutputError(ENGINE_ERROR, f"{type(err).__name__}: {err}"[:300])


def _call_robustly(
    call: Callable[[list[Req], Sampling], list[Generation]], batch: list[Req], sampling: Sampling
) -> list[Generation | OutputError]:
    """Call the backend on a batch; if it raises, call it per item so one bad input fails alone.

    After :data:`DEAD_AFTER` single items in a row have raised, the rest of the batch is not sent
    (every one would fail the same way on a dead engine) and fails with that error.
    """
    try:
        gens = call(batch, sampling)
        if len(gens) != len(batch):
            raise RuntimeError(f"backend returned {len(gens)} outputs for {len(batch)} requests")
        return list(gens)
    except Exception as err:  # noqa: BLE001 - a backend failure must never stop the run here
        if len(batch) == 1:
            log.warning("backend error: %s: %s", type(err).__name__, err)
            return [_engine_error(err)]
        log.warning("backend error on a batch of %d (%s); retrying one by one", len(batch), err)
    out: list[Generation | OutputError] = []
    streak = 0
    for item in batch:
        res = _call_robustly(call, [item], sampling)[0] if streak < DEAD_AFTER else out[-1]
        streak = streak + 1 if isinstance(res, OutputError) else 0
        out.append(res)
    return out


def run_with_retries(
    requests: Sequence[Req],
    call: Callable[[list[Req], Sampling], list[Generation]],
    check: Callable[[Generation], Val],
    cfg: DescribeConfig | ExtractConfig,
) -> list[Outcome[Val]]:
    """Generate for every request; bad output is retried ``cfg.max_retries`` times, then reported.
    An engine error (the backend raised) is reported at once: it is not the model's output, and
    the stage leaves it out of the cache for the next run (:func:`run_stage`).

    ``check`` turns a :class:`Generation` into the value or raises :class:`OutputError`.
    """
    outcomes: list[Outcome[Val] | None] = [None] * len(requests)
    last: dict[int, tuple[str, str]] = {}
    pending = list(range(len(requests)))
    spent = [0.0] * len(requests)
    tries = [0] * len(requests)
    for attempt in range(cfg.max_retries + 1):
        if not pending:
            break
        sampling = Sampling.for_attempt(cfg, attempt)
        start = time.perf_counter()
        results = _call_robustly(call, [requests[i] for i in pending], sampling)
        share = (time.perf_counter() - start) / len(pending)
        still = []
        for i, res in zip(pending, results, strict=True):
            spent[i] += share
            tries[i] += 1
            raw = res.text if isinstance(res, Generation) else ""
            try:
                if isinstance(res, OutputError):
                    raise res
                value = check(res)
            except OutputError as err:
                last[i] = (raw, str(err))
                if err.reason != ENGINE_ERROR:  # an engine error is retried by the next run
                    still.append(i)
                continue
            outcomes[i] = Outcome(value, raw, None, attempt + 1, spent[i])
        pending = still
    for i, out in enumerate(outcomes):
        if out is None:
            raw, error = last[i]
            outcomes[i] = Outcome(None, raw, error, tries[i], spent[i])
    return [o for o in outcomes if o is not None]


Item = TypeVar("Item")
FIRST_CALL = 8  # items in the first engine call of a run, before its speed is known


def next_call_size(size: int, seconds: float, batch_size: int, commit_seconds: float) -> int:
    """Items in the next engine call: the last call's ``size`` scaled so that a call takes about
    ``commit_seconds`` (results are committed after each call), at most ``batch_size``, at least 1.

    Example (a call of 8 items took 2 s; commit every 30 s, batches of 256):
        >>> next_call_size(8, 2.0, 256, 30.0), next_call_size(256, 600.0, 256, 30.0)
        (120, 12)
        >>> next_call_size(8, 0.0, 256, 30.0)  # too fast to measure: full batches
        256
    """
    if seconds <= 0:
        return batch_size
    return max(1, min(batch_size, int(size * commit_seconds / seconds)))


def run_stage(
    keyed: Sequence[tuple[str, Item]],
    *,
    cache: JsonlCache,
    report: StageReport,
    cfg: DescribeConfig | ExtractConfig,
    settings: dict[str, Any],
    backend: Callable[[], Callable[[list[Req], Sampling], list[Generation]]],
    requests: Callable[[list[Item]], list[Req]],
    check: Callable[[Generation], Val],
    fields: Callable[[Item, Outcome[Val]], dict[str, Any]],
) -> None:
    """The skeleton both agent stages share: cache -> pending -> batches -> retries -> records.

    ``keyed`` pairs each item with its cache key; items already in ``cache`` are counted as cached
    (with their failures), the others are sent to the backend in calls of at most
    ``cfg.batch_size`` (``backend()`` is called once, and only when something is pending), and one
    record per item is appended after each call: ``key``, ``settings_hash``, the stage's
    ``fields(item, outcome)``, then ``provenance`` and ``timing``. ``report`` counts done, cached
    and failed items.

    Results are committed by time as well as by count: the first call sends :data:`FIRST_CALL`
    items, and each next call as many as the last one's speed finishes in about
    ``cfg.commit_seconds`` (:func:`next_call_size`), so a kill loses at most that much work even when
    a full batch would take much longer.
    """
    # records of engine errors (left by older versions) are not results: retried like missing ones
    known = {r["key"]: r for r in cache.records() if reason_of(r.get("error")) != ENGINE_ERROR}
    pending = [(k, it) for k, it in keyed if k not in known]
    for k, _ in keyed:
        if k in known:
            report.cached += 1
            report.count_failure(known[k].get("error"))
    if not pending:
        return
    call = backend()
    prov = provenance(settings)
    bar = progress(total=len(pending), desc=report.stage, unit="img")
    start, size = 0, min(cfg.batch_size, FIRST_CALL)
    while start < len(pending):
        batch = pending[start : start + size]
        started = time.perf_counter()
        outcomes = run_with_retries(requests([it for _, it in batch]), call, check, cfg)
        elapsed = time.perf_counter() - started
        records = []
        for (key, it), out in zip(batch, outcomes, strict=True):
            if reason_of(out.error) == ENGINE_ERROR:  # never cached: the next run retries it
                report.count_failure(out.error)
                continue
            records.append(
                {
                    "key": key,
                    "settings_hash": report.settings_hash,
                    **fields(it, out),
                    "provenance": prov,
                    "timing": timing(out.seconds),
                }
            )
            report.count_failure(out.error)
            report.done += int(out.ok)
        cache.append(records)
        bar.update(len(batch))
        if not records:
            bar.close()
            raise EngineFailure(engine_failure_message(report, cfg, len(batch), outcomes[-1].error))
        start += len(batch)
        size = next_call_size(len(batch), elapsed, cfg.batch_size, cfg.commit_seconds)
    bar.close()


def engine_failure_message(
    report: StageReport, cfg: DescribeConfig | ExtractConfig, n: int, error: str | None
) -> str:
    """What went wrong when a whole batch failed in the engine, what was kept, and what to do."""
    return (
        f"agent {report.stage}: the {cfg.backend} engine failed on all {n} request(s) of a batch "
        f"({error}); it is presumed dead, so the stage stops. {report.done} new record(s) of earlier "
        f"batches are in {report.cache_path}; no engine failure was cached. Fix the cause (after an "
        f"out-of-memory error lower agent.{report.stage}.options gpu_memory_utilization, "
        f"max_num_seqs, max_model_len or the pixel limits, or free the GPU), then rerun the same "
        f"command: it resumes with the items not yet done."
    )


def replay_stage(
    wanted: Sequence[dict[str, Any]],
    on: Sequence[str],
    options: dict[str, Any],
    *,
    cache: JsonlCache,
    report: StageReport,
) -> None:
    """The ``replay`` backend: copy matching records of its source (``options``, by default the
    stage's own cache: :func:`replay_source`) into ``cache`` (no engine).

    ``wanted`` holds the first fields of each record the stage would write; a source record
    matches one when it has the same values of the fields ``on`` (:func:`replay_records`).
    """
    found = replay_records(wanted, on, replay_source(options, cache.path))
    known = cache.keys()
    cache.append(r for r in found if r["key"] not in known)
    for rec in found:
        report.cached += 1
        report.count_failure(rec.get("error"))


def finish(report: Report, started: float) -> Report:
    """Set the report's elapsed time since ``started`` (``time.perf_counter()``) and log it."""
    report.elapsed_s = time.perf_counter() - started
    log.info("%s", report)
    return report


def reason_of(error: object) -> str | None:
    """The short reason of an error string (``'schema: phrase: ...'`` -> ``'schema'``).

    Anything that is not a non-empty string (None, or NaN from a pandas column) means no error.
    """
    return error.split(":", 1)[0] if isinstance(error, str) and error else None


def stage_settings(
    stage: str,
    cfg: DescribeConfig | ExtractConfig,
    template: PromptTemplate,
    engine: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """Everything besides the inputs that determines a stage's records (hashed into every key)."""
    return {
        "stage": stage,
        "backend": cfg.backend,
        "model_id": cfg.model_id,
        "revision": cfg.revision,
        "template": {"id": template.id, "version": template.version, "sha256": template.sha256},
        "sampling": {
            "temperature": cfg.temperature,
            "max_new_tokens": cfg.max_new_tokens,
            "seed": cfg.seed,
            "max_retries": cfg.max_retries,
            "retry_temperature": cfg.retry_temperature,
        },
        "engine": engine,
        **extra,
    }


def provenance(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``provenance`` sub-dict of a record: its settings plus host and library versions."""
    return {**settings, "host": socket.gethostname(), "versions": software_versions()}


def timing(seconds: float) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 4),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def settings_hash(settings: dict[str, Any]) -> str:
    return content_hash(settings)[:16]


@dataclass
class StageReport:
    """Counts, failures by reason, throughput and elapsed time of one stage run (one shard)."""

    stage: str
    cache_path: Path
    settings_hash: str
    total: int = 0
    done: int = 0
    cached: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    elapsed_s: float = 0.0

    @property
    def throughput(self) -> float:
        """Newly processed images per second."""
        new = self.total - self.cached
        return new / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def count_failure(self, error: str | None) -> None:
        reason = reason_of(error)
        if reason is not None:
            self.failed += 1
            self.failures[reason] = self.failures.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cache_path"] = str(self.cache_path)
        out["throughput"] = round(self.throughput, 3)
        return out

    def __str__(self) -> str:
        fails = ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items())) or "none"
        return (
            f"{self.stage}: {self.total} image(s): {self.done} new, {self.cached} cached, "
            f"{self.failed} failed ({fails}); {self.elapsed_s:.1f} s, "
            f"{self.throughput:.2f} images/s -> {self.cache_path}"
        )


def count_reasons(errors: Sequence[str | None]) -> dict[str, int]:
    return dict(Counter(r for r in map(reason_of, errors) if r))
