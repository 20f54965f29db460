"""Bounds of the numeric settings, checked when a params file is loaded (pydantic ``ge``/``le``).

A value outside them is a typo or a unit mistake that would otherwise surface hours later as an
out-of-memory crash or an untrained checkpoint; the load error names the key.
"""

from __future__ import annotations

MIN_IMAGE_SIZE = 8  # pixels per side: a patch grid of at least one token on the tiny test models
MAX_IMAGE_SIZE = 2048  # the paper's resolution is 518; CLIP attention grows with its 4th power
MAX_BATCH_SIZE = 1024
MAX_EPOCHS = 1000
MAX_WORKERS = 64
MAX_TOKENS = 32768  # new tokens per agent call
