"""The Stage B record (what the LLM must return) and the anti-false-alarm verdict (LEDGER.md §4 r3).

Example:
    >>> rec = Extraction(anomaly=True, defect_type="scratch", location="upper left",
    ...                  appearance="thin dark line", phrase="thin dark scratch on the upper left")
    >>> verdict(rec.anomaly, "There is a thin dark scratch.", rule="llm_and_vlm")
    True
    >>> verdict(True, "No anomaly.", rule="llm_and_vlm"), verdict(True, "No anomaly.", rule="llm")
    (False, True)
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The VLM's negative answer ("No anomaly", per the describe templates) and the ways VLMs restate it.
# A clause is a global negative when it denies anomalies (or, after "no", differences) and is not
# restricted to part of the image or contrasted with a finding ("no OTHER anomaly", "apart from",
# "but", "elsewhere", ...): a restricted negative accompanies a positive report.
_ANOMALY = r"(?:anomal\w*|abnormalit\w*|defect\w*|damage\w*|flaw\w*|irregularit\w*)"
_GAP = r"(?:[\w-]+\s+){0,3}?"
_NO_ANOMALY = re.compile(
    rf"\bno\s+{_GAP}(?:{_ANOMALY}|difference\w*)\b"
    rf"|(?:\bnot|n't)\s+{_GAP}{_ANOMALY}\b"
    rf"|\b(?:without|free\s+of|none\s+of\s+the)\s+{_GAP}{_ANOMALY}\b"
    rf"|\b(?:defect|anomaly|damage|flaw)[- ]free\b"
    rf"|\b{_ANOMALY}\s*:\s*none\b",
    re.IGNORECASE,
)
_RESTRICTED = re.compile(
    r"\b(?:other|others|further|additional|else|elsewhere|otherwise|apart|aside|besides|except"
    r"|beyond|but|however|although|though|rest|remaining|remainder)\b",
    re.IGNORECASE,
)
_CLAUSES = re.compile(r"[.;!?\n]+")


class Extraction(BaseModel):
    """Stage B output: the LLM's judgement and the anomaly information it extracted."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    anomaly: bool = Field(description="Does the report describe a real defect?")
    defect_type: str = Field("", max_length=80, description="Kind of defect, '' if none.")
    location: str = Field("", max_length=120, description="Where the defect is, '' if none.")
    appearance: str = Field("", max_length=200, description="Size, shape, colour, texture.")
    phrase: str = Field("", max_length=300, description="Concise defect phrase for CLIP.")

    @model_validator(mode="after")
    def _phrase_when_anomalous(self) -> Extraction:
        if self.anomaly and not self.phrase:
            raise ValueError("anomaly is true but phrase is empty")
        return self


def vlm_says_no_anomaly(description: str) -> bool:
    """Whether the Stage A text gives the template's negative answer anywhere.

    The rule: some clause (text between ``.``, ``;``, ``!``, ``?`` or line breaks) denies
    anomalies for the whole image ("No anomaly.", "There is no anomaly", "no defects are visible",
    "does not show any damage", "defect-free", "no meaningful difference") and carries no
    restriction or contrast ("no *other* anomaly", "*apart from* this", "*but*", "*elsewhere*",
    "the *rest*"), which would mean it accompanies a reported finding. A text that states a
    finding and, in a separate unrestricted clause, denies any anomaly is contradictory; it is
    vetoed, the conservative choice for an anti-false-alarm rule.

    >>> vlm_says_no_anomaly("Compared with Image 1, there is no anomaly.")
    True
    >>> vlm_says_no_anomaly("A thin scratch on the left; no other anomaly.")
    False
    """
    clauses = _CLAUSES.split(description or "")
    return any(_NO_ANOMALY.search(c) and not _RESTRICTED.search(c) for c in clauses)


def verdict(llm_anomaly: bool, description: str, rule: Literal["llm", "llm_and_vlm"]) -> bool:
    """The final anomalous/normal call: the LLM's judgement, optionally vetoed by the VLM's 'No anomaly'."""
    if rule == "llm":
        return bool(llm_anomaly)
    if rule == "llm_and_vlm":
        return bool(llm_anomaly) and not vlm_says_no_anomaly(description)
    raise ValueError(f"unknown anti_false_alarm rule {rule!r}; use 'llm' or 'llm_and_vlm'")
