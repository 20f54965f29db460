"""Tiny random-init configurations (CLIP and DINOv2 from ``hxpe/model/configs/``) for tests, the demo
profile and docs: the same code paths as the paper model at a fraction of the cost.

Example:
    >>> cfg = tiny_model_config("anomalyclip")
    >>> cfg.clip.model_name, cfg.anomalyclip.vv_last_n
    ('hxpe-tiny-clip', 3)
"""

from __future__ import annotations

from typing import Any

from hxpe.config import deep_merge
from hxpe.model.config import ModelConfig

TINY_MODEL: dict[str, Any] = {
    "clip": {
        "model_name": "hxpe-tiny-clip",
        "pretrained": None,
        "config_file": "hxpe/model/configs/hxpe-tiny-clip.json",
        "image_size": 112,
        "layers": [1, 2, 3, 4],
    },
    "adaclip": {"prompt_depth": 2, "k_clusters": 4},
    "anomalyclip": {"vv_last_n": 3, "text_prompt_depth": 2},
    "vfm": {"config_file": "hxpe/model/configs/hxpe-tiny-dinov2.json", "bias_last_n": 2},
    "sigma": 1.0,
}


def tiny_model_config(base: str = "adaclip", **overrides: Any) -> ModelConfig:
    """The tiny configuration of ``base`` with nested ``overrides`` merged on top."""
    return ModelConfig.model_validate(deep_merge(TINY_MODEL | {"base": base}, overrides))
