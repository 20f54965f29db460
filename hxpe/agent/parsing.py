"""Checking raw model output: a reason for every way a description or an extraction can be bad.

Reasons (counted in the reports and shown in the notebooks): ``empty``, ``refusal``, ``overlong``
(the description hit ``max_new_tokens``), ``truncated_json`` (the JSON object never closes),
``malformed_json``, ``schema`` (valid JSON that is not an :class:`Extraction`), ``engine_error``
(the backend raised; counted in the report but never cached, so the next run retries it).

Example:
    >>> parse_extraction(Generation('```json\\n{"anomaly": false}\\n```')).anomaly
    False
    >>> try:
    ...     parse_extraction(Generation('{"anomaly": true, "phrase": "dark scr', "length"))
    ... except OutputError as err:
    ...     err.reason
    'truncated_json'
"""

from __future__ import annotations

import json
import re

from pydantic import ValidationError

from hxpe.agent.backend_base import Generation
from hxpe.agent.schema import Extraction

_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i can(no|')t|i am (not able|unable)|i'?m (not able|unable)"
    r"|as an ai\b|i (will|must) (not|decline))",
    re.IGNORECASE,
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)


class OutputError(ValueError):
    """Unusable model output, with a short machine-readable ``reason``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def check_description(gen: Generation) -> str:
    """The description text, or :class:`OutputError` when it is empty, a refusal or cut off."""
    text = gen.text.strip()
    if not text:
        raise OutputError("empty", "the model returned no text")
    if _REFUSAL.match(text):
        raise OutputError("refusal", text[:80])
    if gen.finish_reason == "length":
        raise OutputError("overlong", "the description hit max_new_tokens before it ended")
    return text


def _json_candidate(text: str) -> str:
    fenced = _FENCE.search(text)
    return fenced.group(1) if fenced else text


def parse_extraction(gen: Generation) -> Extraction:
    """The extraction record in ``gen.text`` (the first JSON object, code fences allowed)."""
    text = gen.text.strip()
    if not text:
        raise OutputError("empty", "the model returned no text")
    candidate = _json_candidate(text)
    start = candidate.find("{")
    if start < 0:
        if _REFUSAL.match(text):
            raise OutputError("refusal", text[:80])
        raise OutputError("malformed_json", f"no JSON object in {text[:80]!r}")
    try:
        obj, _ = json.JSONDecoder().raw_decode(candidate[start:])
    except json.JSONDecodeError as err:
        cut_off = gen.finish_reason == "length" or err.pos >= len(candidate[start:].rstrip()) - 1
        if cut_off or candidate.count("{") > candidate.count("}"):
            raise OutputError("truncated_json", f"{err.msg} at char {err.pos}") from err
        raise OutputError("malformed_json", f"{err.msg} at char {err.pos}") from err
    if not isinstance(obj, dict):
        raise OutputError("malformed_json", f"expected a JSON object, got {type(obj).__name__}")
    known = {k: v for k, v in obj.items() if k in Extraction.model_fields}
    try:
        return Extraction.model_validate(known)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise OutputError("schema", f"{where}: {first['msg']}") from err
