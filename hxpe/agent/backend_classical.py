"""The demo profile's classical differential describer: what differs between a test image and the
normal reference of its class, written as plain English (no model, no ground truth).

Steps: both images are brought to one working size, converted to CIELAB and blurred; the reference is
aligned to the test image by phase correlation, its brightness matched, and each test pixel is
compared with its nearest reference pixel in (colour, texture, position) space (so small
misregistration and natural texture variation do not count). A robust threshold (median + ``k`` x MAD, with an absolute floor)
and hysteresis give the differing regions; the largest ones are described by location, size, shape,
brightness, colour and texture. Nothing found: the answer is exactly ``No anomaly``.
Without a reference (the no-reference rule, LEDGER.md §4 r1) the image is compared with a
median-filtered copy of itself (:meth:`ClassicalDescriber.self_reference`).

Options (``agent.describe.options``): ``work_size``, ``blur_sigma``, ``position_weight``, ``k``,
``floor``, ``min_area_frac``, ``max_regions``.

Example:
    >>> import numpy as np
    >>> from PIL import Image, ImageFilter
    >>> ref = Image.fromarray(np.full((64, 64, 3), 180, np.uint8))
    >>> ClassicalDescriber().describe_pair(ref, ref, "plate")
    'No anomaly'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage import color, filters, measure, registration

from hxpe.agent.backend_base import Backend, DescribeRequest, Generation, Sampling, register_backend
from hxpe.agent.vocabulary import Vocabulary, load_vocabulary

log = logging.getLogger(__name__)

NO_ANOMALY = "No anomaly"


@dataclass(frozen=True)
class Region:
    """One differing region, in words."""

    location: str
    size: str
    area_pct: float
    shape: str
    orientation: str | None
    tone: str
    colour: str
    texture: str
    defect_type: str


@dataclass(frozen=True)
class ClassicalSettings:
    work_size: int = 128
    blur_sigma: float = 1.0
    position_weight: float = 1.5
    k: float = 7.0
    floor: float = 12.0
    min_area_frac: float = 0.004
    max_regions: int = 2


def _params(options: dict[str, Any]) -> ClassicalSettings:
    try:
        return ClassicalSettings(**options)
    except TypeError as err:
        raise ValueError(
            f"agent.describe.options for the classical describer: {err}; "
            f"known keys: {sorted(asdict(ClassicalSettings()))}"
        ) from err


def settings_for(options: dict[str, Any], structured: bool = False) -> dict[str, Any]:
    """The describer's settings (part of the cache key). ``structured`` (for
    the extractor) changes nothing here."""
    return {**asdict(_params(options)), "vocabulary": load_vocabulary().version}


def _to_lab(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    rgb = (
        np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
        / 255.0
    )
    lab: np.ndarray = color.rgb2lab(rgb).astype(np.float32)
    return lab


def _local_std(channel: np.ndarray, sigma: float) -> np.ndarray:
    mean = ndimage.gaussian_filter(channel, sigma)
    sq = ndimage.gaussian_filter(channel * channel, sigma)
    std: np.ndarray = np.sqrt(np.clip(sq - mean * mean, 0, None))
    return std


def _tolerant_difference(test: np.ndarray, ref: np.ndarray, position_weight: float) -> np.ndarray:
    """Per test pixel, the distance to the nearest reference pixel in (feature, position) space.

    Position enters with ``position_weight`` per pixel, so a match a few pixels away (misregistration,
    texture) is almost free while a match across the image (a dark scratch "matching" the dark
    background) is expensive.
    """
    h, w, c = test.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) * position_weight
    pos = np.stack([yy.ravel(), xx.ravel()], 1)
    tree = cKDTree(np.concatenate([ref.reshape(-1, c), pos], 1))
    dist, _ = tree.query(np.concatenate([test.reshape(-1, c), pos], 1), k=1)
    nearest: np.ndarray = dist.reshape(h, w).astype(np.float32)
    return nearest


class ClassicalDescriber:
    """Differential describer for the demo profile (see the module docstring)."""

    backend = "classical"

    def __init__(self, **options: Any):
        self.params = _params(options)
        self.vocab: Vocabulary = load_vocabulary()
        self._options = options

    def settings(self) -> dict[str, Any]:
        return settings_for(self._options)

    def describe(self, requests: Sequence[DescribeRequest], sampling: Sampling) -> list[Generation]:
        del sampling  # deterministic: nothing is sampled
        out = []
        for req in requests:
            if req.reference is None:
                out.append(Generation(self.describe_single(req.image, req.class_name)))
            else:
                out.append(Generation(self.describe_pair(req.reference, req.image, req.class_name)))
        return out

    def self_reference(self, test: Image.Image) -> Image.Image:
        """A stand-in normal image made from ``test`` alone (no-reference rule): the image at the
        working size under a median filter of 1/6 of its width, which removes small local
        structures (defects) and keeps the large-scale appearance."""
        p = self.params
        scale = p.work_size / max(test.size)
        size = (max(8, round(test.size[0] * scale)), max(8, round(test.size[1] * scale)))
        small = test.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        width = max(3, (max(size) // 6) | 1)
        return small.filter(ImageFilter.MedianFilter(width))

    # -- analysis ---------------------------------------------------------------------------
    def _features(self, ref: Image.Image, test: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        scale = p.work_size / max(test.size)
        size = (max(8, round(test.size[0] * scale)), max(8, round(test.size[1] * scale)))
        lab_t, lab_r = _to_lab(test, size), _to_lab(ref, size)
        shift, _, _ = registration.phase_cross_correlation(lab_t[..., 0], lab_r[..., 0])
        if np.all(np.abs(shift) < 0.25 * np.array(lab_t.shape[:2])):
            lab_r = ndimage.shift(lab_r, (*shift, 0), order=1, mode="nearest")
        lab_r[..., 0] += np.median(lab_t[..., 0]) - np.median(lab_r[..., 0])  # lighting
        sigma = p.blur_sigma * p.work_size / 128
        feats = []
        for lab in (lab_t, lab_r):
            blurred = np.stack([ndimage.gaussian_filter(lab[..., c], sigma) for c in range(3)], -1)
            texture = _local_std(lab[..., 0], 2 * sigma)[..., None]
            feats.append(np.concatenate([blurred, texture], -1))
        return feats[0], feats[1]

    def regions_mask(self, ref: Image.Image, test: Image.Image) -> tuple[np.ndarray, ...]:
        """(labelled regions, test features, aligned reference features)."""
        p = self.params
        ft, fr = self._features(ref, test)
        diff = ndimage.gaussian_filter(_tolerant_difference(ft, fr, p.position_weight), 1.0)
        median = float(np.median(diff))
        mad = float(np.median(np.abs(diff - median))) * 1.4826
        high = max(p.floor, median + p.k * mad)
        mask = filters.apply_hysteresis_threshold(diff, 0.5 * high, high)
        labels = measure.label(mask, connectivity=2)
        return labels, ft, fr

    def analyse(self, ref: Image.Image, test: Image.Image) -> list[Region]:
        """The differing regions, largest first (at most ``max_regions``)."""
        p = self.params
        labels, ft, fr = self.regions_mask(ref, test)
        h, w = labels.shape
        props = [r for r in measure.regionprops(labels) if r.area >= p.min_area_frac * h * w]
        props.sort(key=lambda r: (-r.area, r.label))
        return [self._region(r, ft, fr, h, w) for r in props[: p.max_regions]]

    def _region(self, r: Any, ft: np.ndarray, fr: np.ndarray, h: int, w: int) -> Region:
        v = self.vocab
        rows, cols = r.coords[:, 0], r.coords[:, 1]
        frac = r.area / (h * w)
        major, minor = r.axis_major_length, max(r.axis_minor_length, 1.0)
        orientation = None
        if major / minor >= 3.5 or (minor <= 3.0 and major >= 8):
            shape = v.shapes["line"]
            angle = abs(np.degrees(r.orientation))  # 0 = along rows (vertical), 90 = horizontal
            orientation = "vertical" if angle < 25 else "horizontal" if angle > 65 else "diagonal"
        elif r.eccentricity < 0.8 and r.solidity > 0.85:
            shape = v.shapes["spot"]
        else:
            shape = v.shapes["blob"]
        lt, lr = ft[rows, cols, 0].mean(), fr[rows, cols, 0].mean()
        tone = "darker" if lt < lr - 8 else "brighter" if lt > lr + 8 else "similar in brightness"
        a, b = ft[rows, cols, 1].mean(), ft[rows, cols, 2].mean()
        chroma = float(np.hypot(a, b))
        if chroma > 15:
            colour = v.hue_word(float(np.degrees(np.arctan2(b, a))))
        else:
            colour = (
                "black"
                if lt < 25
                else "dark grey"
                if lt < 50
                else "light grey"
                if lt < 80
                else "white"
            )
        st, sr = ft[rows, cols, 3].mean(), fr[rows, cols, 3].mean()
        texture = "rougher" if st > 1.5 * sr + 1 else "smoother" if st < sr / 1.5 - 1 else "similar"
        ref_chroma = float(np.hypot(fr[rows, cols, 1].mean(), fr[rows, cols, 2].mean()))
        colour_changed = abs(chroma - ref_chroma) > 15
        if shape == v.shapes["line"]:
            defect = "scratch" if minor <= 4 or tone != "darker" else "crack"
        elif colour_changed:
            defect = "contamination" if frac < 0.05 else "colour change"
        elif shape == v.shapes["spot"]:
            defect = "hole" if tone == "darker" else "spot"
        else:
            defect = "damaged area"
        return Region(
            location=v.location_word(r.centroid[0] / h, r.centroid[1] / w),
            size=v.size_word(frac),
            area_pct=100 * frac,
            shape=shape,
            orientation=orientation,
            tone=tone,
            colour=colour,
            texture=texture,
            defect_type=defect,
        )

    # -- text -------------------------------------------------------------------------------
    def describe_single(self, test: Image.Image, class_name: str) -> str:
        """The description of ``test`` without a reference (against :meth:`self_reference`)."""
        lead = f"The {class_name} shows local irregularities."
        return self._describe(self.self_reference(test), test, lead)

    def describe_pair(self, ref: Image.Image, test: Image.Image, class_name: str) -> str:
        """The description of ``test`` against the normal ``ref`` (or exactly 'No anomaly')."""
        lead = f"Image 2 differs from the normal {class_name} in Image 1."
        return self._describe(ref, test, lead)

    def _describe(self, ref: Image.Image, test: Image.Image, lead_in: str) -> str:
        regions = self.analyse(ref, test)
        if not regions:
            return NO_ANOMALY
        parts = [lead_in]
        for i, reg in enumerate(regions):
            lead = "There is" if i == 0 else "There is also"
            line = f" running {reg.orientation}ly" if reg.orientation else ""
            tone = (
                "It has about the same brightness as the surrounding surface"
                if reg.tone == "similar in brightness"
                else f"It is {reg.tone} than the surrounding surface"
            )
            texture = (
                "with an unchanged texture"
                if reg.texture == "similar"
                else f"with a {reg.texture} texture"
            )
            parts.append(
                f" {lead} a {reg.size} {reg.shape}{line} in the {reg.location} of the image, "
                f"covering about {reg.area_pct:.1f}% of it. {tone}, {reg.colour} in colour, "
                f"{texture}. It looks like a {reg.defect_type}."
            )
        return "".join(parts)


register_backend(
    Backend(
        "classical",
        settings_for=settings_for,
        describer=lambda cfg: ClassicalDescriber(**cfg.options),
    )
)
