"""The words the classical describer writes and the rule extractor reads (``templates/vocabulary_v1.yaml``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

VOCABULARY_FILE = Path(__file__).resolve().parent / "templates" / "vocabulary_v1.yaml"


@dataclass(frozen=True)
class Vocabulary:
    """Parsed vocabulary; see the YAML file for the meaning of each list."""

    version: str
    location_grid: tuple[tuple[str, ...], ...]
    location_synonyms: dict[str, str]
    locations_free: tuple[str, ...]
    sizes: tuple[tuple[float, str], ...]
    size_words: tuple[str, ...]
    shapes: dict[str, str]
    shape_words: tuple[str, ...]
    defect_types: tuple[str, ...]
    tones: tuple[str, ...]
    texture_words: tuple[str, ...]
    hues: tuple[tuple[float, str], ...]
    colour_words: tuple[str, ...]
    negatives: tuple[str, ...]

    def size_word(self, fraction: float) -> str:
        """Size word for an area fraction of the image."""
        return next((w for below, w in self.sizes if fraction < below), self.sizes[-1][1])

    def hue_word(self, angle_deg: float) -> str:
        """Colour name of a CIELAB hue angle."""
        word = self.hues[0][1]
        for start, name in self.hues:
            if angle_deg % 360 >= start:
                word = name
        return word

    def location_word(self, row_frac: float, col_frac: float) -> str:
        """Grid word of a point given as fractions of the image height and width."""
        n_rows, n_cols = len(self.location_grid), len(self.location_grid[0])
        r = min(int(row_frac * n_rows), n_rows - 1)
        c = min(int(col_frac * n_cols), n_cols - 1)
        return self.location_grid[r][c]


def _tuple(raw: dict[str, Any], key: str) -> tuple[str, ...]:
    return tuple(str(x) for x in raw[key])


@functools.lru_cache(maxsize=4)
def load_vocabulary(path: Path = VOCABULARY_FILE) -> Vocabulary:
    """Read and check the vocabulary file (cached per path)."""
    raw = yaml.safe_load(Path(path).read_text())
    try:
        return Vocabulary(
            version=f"{raw['id']}@{raw['version']}",
            location_grid=tuple(tuple(row) for row in raw["location_grid"]),
            location_synonyms={str(k): str(v) for k, v in raw["location_synonyms"].items()},
            locations_free=_tuple(raw, "locations_free"),
            sizes=tuple((float(s["below"]), str(s["word"])) for s in raw["sizes"]),
            size_words=_tuple(raw, "size_words"),
            shapes={str(k): str(v) for k, v in raw["shapes"].items()},
            shape_words=_tuple(raw, "shape_words"),
            defect_types=_tuple(raw, "defect_types"),
            tones=_tuple(raw, "tones"),
            texture_words=_tuple(raw, "texture_words"),
            hues=tuple((float(h["from"]), str(h["word"])) for h in raw["hues"]),
            colour_words=_tuple(raw, "colour_words"),
            negatives=_tuple(raw, "negatives"),
        )
    except KeyError as err:
        raise ValueError(f"vocabulary file {path} lacks key {err}") from err
