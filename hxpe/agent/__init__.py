"""Stages 02-03: the multi-stage prompt agent (VLM descriptions, LLM extraction and verdict).

Entry points (used by notebooks 02/03 and ``hxpe describe`` / ``hxpe extract``):
:func:`run_describe`, :func:`run_extract`, :func:`load_descriptions`, :func:`load_extractions`,
:func:`load_phrases`, :func:`phrases_for_rule` and :func:`merge_shards` (the caches' paths:
``hxpe.results_layout.ResultsLayout.agent_caches``). Backends: ``hxpe/agent/backend_*.py``; prompt templates:
``hxpe/agent/templates/``; scaling out: ``hxpe/agent/SCALING.md``.
"""

from hxpe.agent.cache import merge_shards
from hxpe.agent.describe import DescribeReport, load_descriptions, run_describe
from hxpe.agent.extract import (
    ExtractReport,
    extract_one,
    load_extractions,
    load_phrases,
    phrases_for_rule,
    run_extract,
)
from hxpe.agent.schema import Extraction

__all__ = [
    "DescribeReport",
    "ExtractReport",
    "Extraction",
    "extract_one",
    "load_descriptions",
    "load_extractions",
    "load_phrases",
    "merge_shards",
    "phrases_for_rule",
    "run_describe",
    "run_extract",
]
