"""Datasets: the registry of the seven benchmarks, index builders, the embedded demo generator, and a
torch Dataset over an index."""

from hxpe.data.errors import DatasetError
from hxpe.data.prepare import prepare_all, prepare_dataset

__all__ = ["DatasetError", "prepare_all", "prepare_dataset"]
