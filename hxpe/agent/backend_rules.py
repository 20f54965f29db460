"""The demo profile's rule-based extractor: keywords and regexes instead of an LLM.

It reads the classical describer's text (and free text in the same spirit from a VLM): a negative
answer ('No anomaly', 'no visible defect', ...) gives ``anomaly: false``; otherwise it picks the
defect type, the location, and size/shape/tone/colour/texture words from the shared vocabulary
(``templates/vocabulary_v1.yaml``) and composes a short phrase from them. The output is the JSON text
of an :class:`hxpe.agent.schema.Extraction`, checked by the same parser as an LLM's.

Example:
    >>> ex = RuleExtractor()
    >>> ex.parse("There is a small thin line in the upper left of the image. It is darker "
    ...          "than the surrounding surface. It looks like a scratch.")["phrase"]
    'small dark scratch on the upper left'
    >>> ex.parse("No anomaly")["anomaly"]
    False
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from hxpe.agent.backend_base import Backend, ExtractRequest, Generation, Sampling, register_backend
from hxpe.agent.vocabulary import Vocabulary, load_vocabulary

_TONE_ADJ = {"darker": "dark", "brighter": "bright", "lighter": "light"}
_NEUTRAL = {"black", "white", "grey", "gray", "dark grey", "light grey"}


def settings_for(options: dict[str, Any], structured: bool = False) -> dict[str, Any]:
    """The extractor's settings (part of the cache key). ``structured`` (for
    the extractor) changes nothing here."""
    if options:
        raise ValueError(f"the rules extractor takes no options; got {sorted(options)}")
    return {"vocabulary": load_vocabulary().version}


def _first(text: str, words: Iterable[str]) -> str | None:
    """The word (longest first at equal positions) that occurs earliest in ``text``."""
    best: tuple[int, int, str] | None = None
    for word in words:
        m = re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text)
        if m and (best is None or (m.start(), -len(word)) < (best[0], best[1])):
            best = (m.start(), -len(word), word)
    return best[2] if best else None


class RuleExtractor:
    """Keyword/regex extraction from a description (see the module docstring)."""

    backend = "rules"

    def __init__(self, **options: Any):
        settings_for(options)
        self.vocab: Vocabulary = load_vocabulary()
        self._negatives = [re.compile(p, re.IGNORECASE) for p in self.vocab.negatives]

    def settings(self) -> dict[str, Any]:
        return settings_for({})

    def extract(self, requests: Sequence[ExtractRequest], sampling: Sampling) -> list[Generation]:
        del sampling
        return [Generation(json.dumps(self.parse(r.description))) for r in requests]

    def _normalise(self, text: str) -> str:
        text = " ".join(text.lower().split())
        for word, repl in sorted(self.vocab.location_synonyms.items(), key=lambda kv: -len(kv[0])):
            text = re.sub(rf"(?<![\w-]){re.escape(word)}(?![\w-])", repl, text)
        return text

    def parse(self, description: str) -> dict[str, Any]:
        """The extraction record (as a dict) for one description."""
        v = self.vocab
        empty = {
            "anomaly": False,
            "defect_type": "",
            "location": "",
            "appearance": "",
            "phrase": "",
        }
        if not description.strip() or any(p.search(description) for p in self._negatives):
            return empty
        text = self._normalise(description)
        looks = re.search(r"looks like (?:an? )?([a-z -]+?)[.,;]", text)
        defect = (looks and _first(looks.group(1), v.defect_types)) or _first(text, v.defect_types)
        grid = [w for row in v.location_grid for w in row]
        location = _first(text, grid) or _first(text, v.locations_free)
        size = _first(text, v.size_words)
        shape = _first(text, v.shape_words)
        tone = _first(text, v.tones)
        colour = _first(text, v.colour_words)
        texture = _first(text, v.texture_words)
        if not defect and not (location and shape):
            return empty
        defect = defect or "defect"
        tone_adj = _TONE_ADJ.get(tone or "", tone or "")
        hue = colour if colour and colour not in _NEUTRAL else None
        look = [w for w in (size, hue or tone_adj) if w]
        appearance_parts = [w for w in (size, tone_adj, colour, shape) if w]
        if texture:
            appearance_parts.append(f"{texture.removesuffix('er')} texture")
        phrase = " ".join([*look, defect] + ([f"on the {location}"] if location else []))
        return {
            "anomaly": True,
            "defect_type": defect,
            "location": location or "",
            "appearance": " ".join(dict.fromkeys(" ".join(appearance_parts).split())),
            "phrase": phrase,
        }


register_backend(
    Backend("rules", settings_for=settings_for, extractor=lambda cfg: RuleExtractor(**cfg.options))
)
