"""The benchmark's markdown summary (``<out>/<host>.md``) from its JSON report."""

from __future__ import annotations

import json
from typing import Any


def _f(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def to_markdown(r: dict[str, Any]) -> str:
    h = r["host"]
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
        "| section | naive img/s | fast img/s | speed-up | fast batch | precision | naive peak MB "
        "| fast peak MB | max abs diff map / score |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["sections"].items():
        e = s["eval"]
        lines.append(
            f"| {name} | {_f(e['naive']['images_per_s'], 3)} ({e['naive']['images']} img) "
            f"| {_f(e['fast']['images_per_s'], 3)} ({e['fast']['images']} img) "
            f"| **{_f(e['speedup'])}x** | {e['fast']['batch_size']} | {e['fast']['precision']} "
            f"| {_f(e['naive']['peak_memory_mb'])} | {_f(e['fast']['peak_memory_mb'])} "
            f"| {e['max_abs_diff_map']:.1e} / {e['max_abs_diff_score']:.1e} |"
        )
    lines += ["", "Labels:", ""]
    lines += [f"- {name}: {s['label']}" for name, s in r["sections"].items()]
    lines += [
        "",
        "## Where the time goes (fast path, per-stage wall time over the timed run)",
        "",
        "| section | "
        + " | ".join(["clip_vision", "text", "dinov2", "maps/heads/other", "smoothing alone"])
        + " |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in r["sections"].items():
        st, sh = s["eval"]["stages_fast_s"], s["eval"]["stages_fast_share"]
        cells = []
        for k in ("clip_vision", "text", "dinov2", "maps_heads_smoothing_other"):
            cells.append(f"{_f(st[k], 3)} s ({100 * sh[k]:.0f} %)" if k in st else "n/a")
        cells.append(f"{_f(st['of_which_smoothing_alone'], 4)} s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Training step (hxpe.train's step: forward + losses + backward + its optimiser)",
        "",
        "| section | naive s/step (batch 1) | fast s/step | fast batch | fast s/image "
        "| speed-up per image |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in r["sections"].items():
        t = s.get("train")
        if t is None:
            lines.append(f"| {name} | not measured | | | | |")
            continue
        lines.append(
            f"| {name} | {_f(t['naive']['s_per_step'], 3)} | {_f(t['fast']['s_per_step'], 3)} "
            f"| {t['fast']['batch_size']} | {_f(t['fast']['s_per_image'], 3)} "
            f"| **{_f(t['speedup_per_image'])}x** |"
        )
    lines += [
        "",
        "## Text: cost per distinct phrase",
        "",
        "| section | image-conditioned text | sentences/prompt | naive ms/phrase "
        "| fast uncached ms/phrase | fast cached ms/phrase |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in r["sections"].items():
        p = s["phrases"]
        lines.append(
            f"| {name} | {p['text_conditioned_on_image']} | {p['sentences_per_prompt']} "
            f"| {_f(p['naive_ms_per_phrase'], 3)} | {_f(p['fast_uncached_ms_per_phrase'], 3)} "
            f"| {_f(p['fast_cached_ms_per_phrase'], 4)} |"
        )
    lines.append(
        "\nImage-conditioned text (AdaCLIP dynamic language prompts) cannot be cached: its cost "
        "is per image."
    )
    m = r.get("memory")
    if m:
        lines += [
            "",
            f"## Host memory while evaluating (tiny model, maps {m['map_size']} px, "
            f"batch {m['batch_size']})",
            "",
            "| images | mode | peak RSS MB | growth over start MB | files | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for run in m["runs"]:
            lines.append(
                f"| {run['n_images']} | {run['mode']} | {_f(run['peak_rss_mb'])} "
                f"| {_f(run['growth_mb'])} | {run['files_written']} | {_f(run['seconds'])} |"
            )
    a = r.get("aupro")
    if a:
        lines += ["", "## AUPRO (anomalyclip convention)", ""]
        if "skipped" in a:
            lines.append(a["skipped"])
        else:
            lines += [
                "| maps | size | vectorised s | loop s | speed-up | abs diff |",
                "|---|---|---|---|---|---|",
            ]
            for c in a["cases"]:
                lines.append(
                    f"| {c['n_maps']} | {c['size']} | {_f(c['vectorised_s'], 3)} "
                    f"| {_f(c.get('loop_s'), 2)} | {_f(c.get('speedup'))}x "
                    f"| {c.get('abs_diff', float('nan')):.1e} |"
                )
    lines += ["", "## Top operators of one fast batch (torch.profiler, self time)", ""]
    for name, s in r["sections"].items():
        ops = s.get("profile_top_ops")
        if not ops:
            continue
        lines += [f"### {name}", "", "| op | calls | self CPU ms | self CUDA ms | share |"]
        lines.append("|---|---|---|---|---|")
        for o in ops[:10]:
            lines.append(
                f"| `{o['op']}` | {o['calls']} | {_f(o['self_cpu_ms'])} "
                f"| {_f(o['self_cuda_ms'])} | {100 * o['share']:.1f} % |"
            )
        lines.append("")
    lines += ["", f"Stage wall times (s): {json.dumps(r['stage_seconds'])}", ""]
    return "\n".join(lines)
