"""Weights the project ships: data files, no code (see each folder's README.md)."""
