"""Prompt sentences as data: the state x template ensembles of ``prompts.yaml`` and the explainable
phrase slotted into abnormal prompts.

A :class:`PromptSet` holds normal and abnormal sentence templates with an ``{obj}`` slot. The
abnormal prompt of an image with a gated phrase renders ``{obj}`` as ``"object with <phrase>"``
(``model.explain.object_template``); an image without a phrase gets the generic prompt.

Example:
    >>> ps = PromptSet(normal=("{obj}.",), abnormal=("damaged {obj}.",))
    >>> ps.render("abnormal", "object", phrase="a small scratch")
    ['damaged object with a small scratch.']
    >>> ps.render("abnormal", "object", phrase=None)
    ['damaged object.']
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import yaml

PROMPTS_FILE = Path(__file__).with_name("prompts.yaml")
Kind = Literal["normal", "abnormal"]


@cache
def _prompt_data() -> dict:
    return yaml.safe_load(PROMPTS_FILE.read_text())


@dataclass(frozen=True)
class PromptSet:
    """Normal and abnormal sentence templates, each with an ``{obj}`` slot."""

    normal: tuple[str, ...]
    abnormal: tuple[str, ...]
    object_template: str = "{obj} with {phrase}"

    def render(self, kind: Kind, obj: str, phrase: str | None = None) -> list[str]:
        """The sentences of one prompt; ``phrase`` (abnormal only) enters the object slot."""
        if phrase and kind == "abnormal":
            obj = self.object_template.format(obj=obj, phrase=phrase)
        return [t.format(obj=obj) for t in getattr(self, kind)]


def ensemble(template_set: str, object_template: str = "{obj} with {phrase}") -> PromptSet:
    """The state x template ensemble named ``template_set`` in ``prompts.yaml``."""
    data = _prompt_data()
    if template_set not in data["templates"]:
        raise KeyError(
            f"No template set {template_set!r} in {PROMPTS_FILE}; known: {sorted(data['templates'])}."
        )
    templates = data["templates"][template_set]

    def compose(states: list[str]) -> tuple[str, ...]:
        return tuple(t.format(s) for s in states for t in templates)

    return PromptSet(
        normal=compose(data["states"]["normal"]),
        abnormal=compose(data["states"]["abnormal"]),
        object_template=object_template,
    )
