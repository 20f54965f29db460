"""Where stages 02-03 keep their caches, one pair per reference rule (method.md §4 row 1).

The default rule (a normal reference per class) uses ``agent/descriptions.jsonl`` and
``agent/extractions.jsonl``; the no-reference rule (``none``: the VLM sees the test image alone)
uses ``agent/descriptions_noref.jsonl`` and ``agent/extractions_noref.jsonl``.

Example:
    >>> [p.name for p in agent_paths(Path("results/demo"), "none")]
    ['descriptions_noref.jsonl', 'extractions_noref.jsonl']
"""

from __future__ import annotations

from pathlib import Path

AGENT_DIR = "agent"
DESCRIPTIONS = "descriptions"
EXTRACTIONS = "extractions"
RULE_SUFFIX = {"first_normal_train": "", "none": "_noref"}


def agent_paths(results_dir: Path, rule: str = "first_normal_train") -> tuple[Path, Path]:
    """``(descriptions, extractions)`` caches of ``rule`` in a profile's results directory."""
    if rule not in RULE_SUFFIX:
        raise ValueError(f"unknown reference rule {rule!r}; use one of {sorted(RULE_SUFFIX)}")
    agent, suffix = Path(results_dir) / AGENT_DIR, RULE_SUFFIX[rule]
    return agent / f"{DESCRIPTIONS}{suffix}.jsonl", agent / f"{EXTRACTIONS}{suffix}.jsonl"


def phrases_for_rule(results_dir: Path, rule: str) -> dict[str, str | None]:
    """The gated phrases (image_id -> phrase or None) that stage 03 wrote for ``rule``."""
    from hxpe.agent.extract import load_phrases

    _, extractions = agent_paths(results_dir, rule)
    if not extractions.is_file():
        raise FileNotFoundError(
            f"{extractions} is missing: stages 02-03 have not run for reference rule {rule!r}. "
            f"Run them first (make extract PROFILE=<profile>)."
        )
    return load_phrases(extractions)
