"""The pretraining scenes of the demo backbones: generated images, defect masks and captions.

The scenes come from the demo data generator itself (:func:`hxpe.data.demo_scenes.render_normal`,
:func:`hxpe.data.demo_defects.apply_defect`) over all seven demo classes and all six defect kinds, so
the backbones see the same kind of pictures as the demo (as the real CLIP saw photographs of the real
datasets' kinds of objects). They are drawn from a different random stream than the demo's aux and
target sets: each pretraining image ``i`` uses ``numpy.random.default_rng([seed, SALT, i])``, a seed
sequence of three words, where every demo image uses five (``[seed, class, split, defect, number]``,
:func:`hxpe.data.demo._rng`), so no pretraining image can coincide with a demo image.

A caption names the object, its colour, its state and, for a defect, the kind, size, tone and
location, with the words the demo's describer and extractor use (``vocabulary_v1.yaml``).

Example:
    >>> s = pretraining_sample(0, 4, size=64)
    >>> s.image.shape, s.mask.shape, s.cls
    ((64, 64, 3), (64, 64), 'gravel')
    >>> s.caption
    'a cropped photo of a damaged yellow gravel with a small stain at the middle left.'
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from skimage import color

from hxpe.agent.vocabulary import load_vocabulary
from hxpe.data.demo import demo_classes
from hxpe.data.demo_defects import DEFECTS, apply_defect
from hxpe.data.demo_scenes import render_normal

# Bump when the scenes or captions change: recorded in the backbones' provenance.
GENERATOR_VERSION = "demo-pretrain-v2"
SALT = zlib.crc32(b"hxpe-demo-backbones")
DEFECT_RATE = 0.6  # share of pretraining images that carry a defect

DEFECT_WORDS = {
    "scratch": "scratch",
    "crack": "crack",
    "hole": "hole",
    "stain": "stain",
    "foreign_object": "foreign object",
    "deformation": "deformation",
}
NORMAL_STATES = ("flawless", "perfect", "unblemished", "normal", "intact")
ABNORMAL_STATES = ("damaged", "defective", "broken", "flawed")
TEMPLATES = ("a photo of a {}.", "a close-up photo of the {}.", "a cropped photo of a {}.")


@dataclass(frozen=True)
class Sample:
    """One pretraining scene: float32 RGB in [0, 1], its defect mask (all False when normal), its
    caption and a defect phrase in the demo extractor's words (a decoy one on a normal scene)."""

    image: np.ndarray
    mask: np.ndarray
    cls: str
    defect: str | None
    caption: str
    phrase: str
    negative: str


def colour_name(rgb: np.ndarray) -> str:
    """The vocabulary's colour word of an RGB in [0, 1]: a grey level when the CIELAB chroma is
    low, else the hue word (``hues`` of ``vocabulary_v1.yaml``), 'light' or 'dark' when far from
    mid-lightness."""
    lab = color.rgb2lab(np.asarray(rgb, np.float64).reshape(1, 1, 3))[0, 0]
    chroma = float(np.hypot(lab[1], lab[2]))
    if chroma < 12:
        return "dark grey" if lab[0] < 35 else "light grey" if lab[0] > 75 else "grey"
    hue = load_vocabulary().hue_word(float(np.degrees(np.arctan2(lab[2], lab[1]))))
    return f"light {hue}" if lab[0] > 80 else f"dark {hue}" if lab[0] < 35 else hue


def location_word(mask: np.ndarray) -> str:
    """The vocabulary's 3 x 3 grid word ('upper left' ...) of the mask's centroid."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return load_vocabulary().location_word(float(ys.mean()) / h, float(xs.mean()) / w)


def caption(
    cls: str, colour: str, defect: str | None, mask: np.ndarray, rng: np.random.Generator
) -> str:
    """The caption of one scene (template and state words drawn from ``rng``)."""
    if defect is None:
        return normal_caption(cls, colour, rng)
    size = load_vocabulary().size_word(float(mask.mean()))
    return damaged_caption(cls, colour, f"{size} {DEFECT_WORDS[defect]}", location_word(mask), rng)


def normal_caption(cls: str, colour: str, rng: np.random.Generator) -> str:
    """'a photo of a flawless red brick.' (template and state word drawn from ``rng``)."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    state = NORMAL_STATES[int(rng.integers(len(NORMAL_STATES)))]
    return template.format(f"{state} {colour} {cls}")


def damaged_caption(cls: str, colour: str, words: str, where: str, rng: np.random.Generator) -> str:
    """'a photo of a damaged red brick with a small stain at the center.' (template, state word
    and whether the state is said drawn from ``rng``)."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    state = ABNORMAL_STATES[int(rng.integers(len(ABNORMAL_STATES)))]
    obj = f"{colour} {cls}" if rng.random() < 0.5 else f"{state} {colour} {cls}"
    return template.format(f"{obj} with a {words} at the {where}")


def pretraining_sample(seed: int, i: int, size: int = 112) -> Sample:
    """Scene ``i`` of the pretraining stream ``seed``: class ``i mod 7``, a defect with
    probability :data:`DEFECT_RATE` (any of the six kinds, on any class)."""
    classes = sorted(demo_classes())
    cls = classes[i % len(classes)]
    rng = np.random.default_rng([seed, SALT, i])
    scene = render_normal(demo_classes()[cls], size, rng)
    colour = colour_name(np.asarray(demo_classes()[cls]["tint"], np.float32))
    defect: str | None = None
    image, mask = scene.image, np.zeros(scene.alpha.shape, bool)
    if rng.random() < DEFECT_RATE:
        defect = sorted(DEFECTS)[int(rng.integers(len(DEFECTS)))]
        image, mask, _ = apply_defect(defect, scene, rng)
    text = caption(cls, colour, defect, mask, rng)
    return Sample(
        image.astype(np.float32),
        mask.astype(bool),
        cls,
        defect,
        text,
        phrase(image, mask, defect, rng),
        counterfactual(cls, colour, defect, np.random.default_rng([seed, SALT, i, 1])),
    )


def counterfactual(cls: str, colour: str, defect: str | None, rng: np.random.Generator) -> str:
    """A hard-negative caption of one scene: the same object in the other state. A damaged scene
    gets a flawless caption; a normal one a damaged caption with a random defect kind, size and
    place. Drawn from its own stream (``rng``), so the scenes and captions do not depend on it."""
    if defect is not None:
        return normal_caption(cls, colour, rng)
    vocab = load_vocabulary()
    kind = DEFECT_WORDS[sorted(DEFECTS)[int(rng.integers(len(DEFECTS)))]]
    size = vocab.sizes[int(rng.integers(len(vocab.sizes)))][1]
    where = vocab.location_grid[int(rng.integers(3))][int(rng.integers(3))]
    return damaged_caption(cls, colour, f"{size} {kind}", where, rng)


GENERIC_WORDS = ("damaged area", "spot", "contamination", "mark")


def phrase(
    image: np.ndarray, mask: np.ndarray, defect: str | None, rng: np.random.Generator
) -> str:
    """A defect phrase as the demo's extractor writes them ("small dark scratch on the middle
    left"): size, colour and location of the mask, the defect's word or a generic one. A normal
    scene gets a decoy phrase (a random place and word), as a false alarm of the describer would
    give it."""
    vocab = load_vocabulary()
    if defect is None or not mask.any():
        row, col = rng.integers(3, size=2)
        where = vocab.location_grid[int(row)][int(col)]
        word = (*DEFECT_WORDS.values(), *GENERIC_WORDS)[int(rng.integers(len(DEFECT_WORDS) + 4))]
        size = ("tiny", "small", "medium-sized")[int(rng.integers(3))]
        return f"{size} {colour_name(image.reshape(-1, 3).mean(0))} {word} on the {where}"
    word = DEFECT_WORDS[defect] if rng.random() < 0.6 else GENERIC_WORDS[int(rng.integers(4))]
    colour = colour_name(image[mask].mean(0))
    return f"{vocab.size_word(float(mask.mean()))} {colour} {word} on the {location_word(mask)}"


def phrase_caption(cls: str, phrase_text: str) -> str:
    """The abnormal sentence that carries a phrase, as the method's prompts build it."""
    return f"a photo of a damaged {cls} with {phrase_text}."


def region_caption(cls: str, defect: str | None) -> str:
    """The caption of one patch region: the class's normal state, or the defect kind on it."""
    if defect is None:
        return f"a photo of a flawless {cls}."
    return f"a photo of a damaged {cls} with a {DEFECT_WORDS[defect]}."
