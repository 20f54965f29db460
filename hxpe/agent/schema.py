"""The Stage B record (what the LLM must return) and the anti-false-alarm verdict (method.md §4 row 3).

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

_NO_ANOMALY = re.compile(r"^\W*no\s+anomal(y|ies)\b", re.IGNORECASE)


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
    """Whether the Stage A text is the template's 'No anomaly' answer."""
    return bool(_NO_ANOMALY.match(description or ""))


def verdict(llm_anomaly: bool, description: str, rule: Literal["llm", "llm_and_vlm"]) -> bool:
    """The final anomalous/normal call: the LLM's judgement, optionally vetoed by the VLM's 'No anomaly'."""
    if rule == "llm":
        return bool(llm_anomaly)
    if rule == "llm_and_vlm":
        return bool(llm_anomaly) and not vlm_says_no_anomaly(description)
    raise ValueError(f"unknown anti_false_alarm rule {rule!r}; use 'llm' or 'llm_and_vlm'")
