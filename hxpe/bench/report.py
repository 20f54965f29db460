"""The benchmark's markdown summary (``<out>/<host>.md``) from its JSON report."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

STAGES = ("clip_vision", "text", "dinov2", "maps_heads_smoothing_other")


def _f(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    """Markdown table lines.

    >>> table(["a", "b"], [[1, "x"]])
    ['| a | b |', '|---|---|', '| 1 | x |']
    """

    def line(cells: Iterable[Any]) -> str:
        return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def _eval_row(name: str, e: dict[str, Any]) -> list[Any]:
    naive, fast = e["naive"], e["fast"]
    return [
        name,
        f"{_f(naive['images_per_s'], 3)} ({naive['images']} img)",
        f"{_f(fast['images_per_s'], 3)} ({fast['images']} img)",
        f"**{_f(e['speedup'])}x**",
        fast["batch_size"],
        fast["precision"],
        _f(naive["peak_memory_mb"]),
        _f(fast["peak_memory_mb"]),
        f"{e['max_abs_diff_map']:.1e} / {e['max_abs_diff_score']:.1e}",
    ]


def _stage_row(name: str, e: dict[str, Any]) -> list[Any]:
    st, sh = e["stages_fast_s"], e["stages_fast_share"]
    cells = [f"{_f(st[k], 3)} s ({100 * sh[k]:.0f} %)" if k in st else "n/a" for k in STAGES]
    return [name, *cells, f"{_f(st['of_which_smoothing_alone'], 4)} s"]


def _train_row(name: str, t: dict[str, Any] | None) -> list[Any]:
    if t is None:
        return [name, "not measured", "", "", "", ""]
    return [
        name,
        _f(t["naive"]["s_per_step"], 3),
        _f(t["fast"]["s_per_step"], 3),
        t["fast"]["batch_size"],
        _f(t["fast"]["s_per_image"], 3),
        f"**{_f(t['speedup_per_image'])}x**",
    ]


def _phrase_row(name: str, p: dict[str, Any]) -> list[Any]:
    return [
        name,
        p["text_conditioned_on_image"],
        p["sentences_per_prompt"],
        _f(p["naive_ms_per_phrase"], 3),
        _f(p["fast_uncached_ms_per_phrase"], 3),
        _f(p["fast_cached_ms_per_phrase"], 4),
    ]


def _memory(m: dict[str, Any]) -> list[str]:
    title = f"## Host memory while evaluating (tiny model, maps {m['map_size']} px, "
    title += f"batch {m['batch_size']})"
    rows = [
        [
            run["n_images"],
            run["mode"],
            _f(run["peak_rss_mb"]),
            _f(run["growth_mb"]),
            run["files_written"],
            _f(run["seconds"]),
        ]
        for run in m["runs"]
    ]
    header = ["images", "mode", "peak RSS MB", "growth over start MB", "files", "seconds"]
    return ["", title, "", *table(header, rows)]


def _aupro(a: dict[str, Any]) -> list[str]:
    lines = ["", "## AUPRO (anomalyclip convention)", ""]
    if "skipped" in a:
        return [*lines, a["skipped"]]
    rows = [
        [
            c["n_maps"],
            c["size"],
            _f(c["vectorised_s"], 3),
            _f(c.get("loop_s"), 2),
            f"{_f(c.get('speedup'))}x",
            f"{c.get('abs_diff', float('nan')):.1e}",
        ]
        for c in a["cases"]
    ]
    header = ["maps", "size", "vectorised s", "loop s", "speed-up", "abs diff"]
    return [*lines, *table(header, rows)]


def _top_ops(name: str, ops: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            f"`{o['op']}`",
            o["calls"],
            _f(o["self_cpu_ms"]),
            _f(o["self_cuda_ms"]),
            f"{100 * o['share']:.1f} %",
        ]
        for o in ops[:10]
    ]
    header = ["op", "calls", "self CPU ms", "self CUDA ms", "share"]
    return [f"### {name}", "", *table(header, rows), ""]


def to_markdown(r: dict[str, Any]) -> str:
    h = r["host"]
    sections = r["sections"]
    lines = [
        f"# hxpe benchmark: {h['host']}",
        "",
        f"`{r['command']}`, total {r['total_seconds']} s. "
        f"Device {h['device']} ({h['gpu'] or h['cpu']}), {h['cpu_count_logical']} logical CPUs, "
        f"torch {h['torch']}, {h['torch_threads']} threads, Python {h['python']}.",
        "",
        *[f"- {n}" for n in r["notes"]],
        "",
        "## Evaluation throughput (fast vs naive, same run)",
        "",
        *table(
            ["section", "naive img/s", "fast img/s", "speed-up", "fast batch", "precision"]
            + ["naive peak MB", "fast peak MB", "max abs diff map / score"],
            [_eval_row(name, s["eval"]) for name, s in sections.items()],
        ),
        "",
        "Labels:",
        "",
        *[f"- {name}: {s['label']}" for name, s in sections.items()],
        "",
        "## Where the time goes (fast path, per-stage wall time over the timed run)",
        "",
        *table(
            ["section", "clip_vision", "text", "dinov2", "maps/heads/other", "smoothing alone"],
            [_stage_row(name, s["eval"]) for name, s in sections.items()],
        ),
        "",
        "## Training step (hxpe.train's step: forward + losses + backward + its optimiser)",
        "",
        *table(
            ["section", "naive s/step (batch 1)", "fast s/step", "fast batch", "fast s/image"]
            + ["speed-up per image"],
            [_train_row(name, s.get("train")) for name, s in sections.items()],
        ),
        "",
        "## Text: cost per distinct phrase",
        "",
        *table(
            ["section", "image-conditioned text", "sentences/prompt", "naive ms/phrase"]
            + ["fast uncached ms/phrase", "fast cached ms/phrase"],
            [_phrase_row(name, s["phrases"]) for name, s in sections.items()],
        ),
        "\nImage-conditioned text (AdaCLIP dynamic language prompts) cannot be cached: its cost "
        "is per image.",
    ]
    if r.get("memory"):
        lines += _memory(r["memory"])
    if r.get("aupro"):
        lines += _aupro(r["aupro"])
    lines += ["", "## Top operators of one fast batch (torch.profiler, self time)", ""]
    for name, s in sections.items():
        if s.get("profile_top_ops"):
            lines += _top_ops(name, s["profile_top_ops"])
    lines += ["", f"Stage wall times (s): {json.dumps(r['stage_seconds'])}", ""]
    return "\n".join(lines)
