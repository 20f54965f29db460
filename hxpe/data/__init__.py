"""Datasets: the registry of the seven benchmarks, index builders, the embedded demo generator, and a
torch Dataset over an index."""
