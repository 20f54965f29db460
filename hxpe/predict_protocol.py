"""One image, one score: the evaluation settings a checkpoint was scored with, and how one
``hxpe predict`` (or app) call differs from them.

Training stores the protocol's settings in the checkpoint's ``config.json`` (``evaluation``:
``image_size``, ``reference_rule``, ``hsf_rng``, ``profile``; :func:`hxpe.train.evaluation_settings`).
``hxpe predict`` and the app default to them, so a test image with the class's protocol reference
gives the protocol's stored score and map; every setting the caller overrides is listed in the JSON
record's ``protocol.differs``.

Example:
    >>> check = ProtocolCheck.of(
    ...     {"image_size": 128, "reference_rule": "first_normal_train", "hsf_rng": "per_image"},
    ...     None, image_size=112, reference_rule=None, reference="ref.png", class_name="bracket",
    ... )
    >>> check.differs
    {'image_size': {'protocol': 128, 'used': 112}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOL_KEYS = ("image_size", "reference_rule", "hsf_rng")
PROTOCOL_REFERENCE = "the class's first normal training image (rule first_normal_train)"


def protocol_settings(source: str | Path | None) -> dict[str, Any] | None:
    """The ``evaluation`` settings stored in the checkpoint directory ``source``; None when it is
    not a directory with a ``config.json`` that holds them (checkpoints written before they were
    stored, models passed by the caller)."""
    if source is None:
        return None
    path = Path(source) / "config.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text()).get("evaluation")
    return None if stored is None else {**stored, "source": str(path)}


def _clip_size(model: Any) -> int | None:
    cfg = getattr(model, "cfg", None)
    return int(cfg.clip.image_size) if cfg is not None and hasattr(cfg, "clip") else None


@dataclass
class ProtocolCheck:
    """The checkpoint's protocol settings, the settings one prediction uses, and their differences."""

    protocol: dict[str, Any] | None
    used: dict[str, Any]
    differs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        protocol: dict[str, Any] | None,
        model: Any,
        *,
        image_size: int | None,
        reference_rule: str | None,
        reference: str | Path | None,
        class_name: str,
    ) -> ProtocolCheck:
        """Resolve the settings: the caller's where given, else the protocol's, else the model's
        CLIP input size and the rule that the given reference implies."""
        p = protocol or {}
        size = image_size or p.get("image_size") or _clip_size(model)
        if size is None:
            raise ValueError(
                "The model has no .cfg and the checkpoint stores no evaluation settings to take "
                "the input size from; pass image_size."
            )
        rule = reference_rule or p.get("reference_rule")
        if rule is None:
            rule = "first_normal_train" if reference is not None else "none"
        used = {
            "image_size": int(size),
            "reference_rule": rule,
            "hsf_rng": p.get("hsf_rng", "per_image"),
            "class_name": class_name,
        }
        check = cls(protocol, used)
        if protocol is None:
            check.notes.append(
                "the checkpoint stores no evaluation settings (written before they were stored, "
                "or a model passed by the caller): the model's CLIP input size is used"
            )
        else:
            check.differs = {
                k: {"protocol": p.get(k), "used": used[k]}
                for k in PROTOCOL_KEYS
                if k in p and p[k] != used[k]
            }
        if rule == "first_normal_train" and reference is None:
            check.differs["reference"] = {"protocol": PROTOCOL_REFERENCE, "used": None}
            check.notes.append(
                "no reference given: the DINOv2 prompt uses patch rarity within the image; pass "
                "the class's first normal training image as --reference to match the protocol"
            )
        if rule == "none" and reference is not None:
            check.notes.append(
                "reference not used: this checkpoint's protocol uses no reference (rule none); "
                "pass --reference-rule first_normal_train to use it"
            )
        if used["hsf_rng"] == "stream":
            check.notes.append(
                "the protocol drew the HSF k-means from one stream over the test set "
                "(evaluation.hsf_rng: stream): its stored score depends on the images scored "
                "before this one and cannot be reproduced for one image"
            )
        check.notes.append(
            "the protocol passes the index's class name to bases whose prompts carry it "
            "(adaclip); use the same --class-name to match"
        )
        return check

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.protocol,
            "used": self.used,
            "differs": self.differs,
            "matches_protocol": self.protocol is not None and not self.differs,
            "notes": self.notes,
        }
