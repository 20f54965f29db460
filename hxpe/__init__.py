"""HXPE: hybrid explainable prompt enhancement for zero-shot industrial anomaly detection.

A reference implementation of Cai et al., IJCAI 2025, as a notebook-first research compendium.
See ``hxpe/ARCHITECTURE.md`` for the stage contract and ``hxpe/LEDGER.md`` for every choice the paper
leaves open.
"""

__version__ = "0.1.0"
