"""Prompt templates: versioned YAML data files in ``hxpe/agent/templates/`` with a content hash.

Example:
    >>> t = load_template("describe_v1")
    >>> t.id, t.version, len(t.sha256)
    ('describe_v1', 1, 64)
    >>> "Image 1 is a normal (defect-free) screw." in t.render(class_name="screw")
    True
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

TEMPLATE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt: ``text`` (and an optional ``system`` message) with ``{field}`` placeholders."""

    id: str
    version: int
    stage: str
    text: str
    fields: tuple[str, ...]
    system: str | None = None
    needs_reference: bool = False

    @property
    def sha256(self) -> str:
        """Hash of everything that reaches the model (id, version, system and user text)."""
        payload = json.dumps(
            {"id": self.id, "version": self.version, "system": self.system, "text": self.text},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def render(self, **values: str) -> str:
        """The user message with every placeholder filled; missing or unknown fields are errors."""
        missing = [f for f in self.fields if f not in values]
        extra = [k for k in values if k not in self.fields]
        if missing or extra:
            raise KeyError(
                f"template {self.id!r} takes fields {list(self.fields)}; "
                f"missing {missing}, unexpected {extra}"
            )
        return self.text.format(**values)


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def load_template(name: str | Path) -> PromptTemplate:
    """Load a template by id (a file in ``hxpe/agent/templates/``) or by path to a YAML file."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = TEMPLATE_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(
            p.stem for p in TEMPLATE_DIR.glob("*.yaml") if not p.stem.startswith("vocabulary")
        )
        raise FileNotFoundError(
            f"Prompt template {str(name)!r} not found ({path}); known ids: {known}. "
            f"Set agent.describe.template / agent.extract.template to one of them or to a YAML path."
        )
    raw = yaml.safe_load(path.read_text())
    required = {"id", "version", "stage", "text", "fields"}
    if not isinstance(raw, dict) or not required <= raw.keys():
        raise ValueError(f"template file {path} must define keys {sorted(required)}")
    template = PromptTemplate(
        id=str(raw["id"]),
        version=int(raw["version"]),
        stage=str(raw["stage"]),
        text=str(raw["text"]),
        fields=tuple(raw["fields"]),
        system=raw.get("system"),
        needs_reference=bool(raw.get("needs_reference", False)),
    )
    used = _placeholders(template.text)
    if used != set(template.fields):
        raise ValueError(
            f"template {path}: placeholders {sorted(used)} differ from declared fields "
            f"{sorted(template.fields)} (write literal braces as '{{{{' and '}}}}')"
        )
    return template
