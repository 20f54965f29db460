"""Normal images of the demo classes: textures and a coin cut from scikit-image's photographs, and
procedurally drawn objects (washer, bracket, pill) with soft, anti-aliased edges.

Every scene returns a :class:`Scene`: the RGB image (float32 in [0, 1]), the object's coverage (alpha,
1 everywhere for textures) and the background without the object (for "missing part" defects). Small
natural variation (crop offset, position, rotation, lighting, sensor noise) comes from ``rng``, so
that no two normal images are identical and differencing against a reference is not trivially
perfect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage
from skimage import data as skdata
from skimage import filters, measure, transform

NOISE_SIGMA = 0.01


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 float32 in [0, 1]
    alpha: np.ndarray  # H x W float32: object coverage (1 = object)
    background: np.ndarray  # H x W x 3: the scene without the object
    params: dict[str, float]


@cache
def photo(name: str) -> np.ndarray:
    """A grey-scale scikit-image photograph as float32 in [0, 1] (bundled, no download)."""
    arr = getattr(skdata, name)()
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2)
    return (arr / 255.0).astype(np.float32)


def rounded(**params: float) -> dict[str, float]:
    """Parameters rounded to 4 decimals for ``defects.csv``."""
    return {k: round(float(v), 4) for k, v in params.items()}


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in units of the image size, centred on 0."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    return np.meshgrid(c, c, indexing="ij")


def coverage(sdf: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage of a signed distance field (negative inside) in image units."""
    return np.clip(0.5 - sdf * size, 0.0, 1.0).astype(np.float32)


def lighting(rng: np.random.Generator) -> tuple[float, float]:
    """A random gain and offset: small illumination changes between shots."""
    return float(rng.normal(1.0, 0.04)), float(rng.normal(0.0, 0.015))


def finish(rgb: np.ndarray, rng: np.random.Generator, gain: float, offset: float) -> np.ndarray:
    noise = rng.normal(0.0, NOISE_SIGMA, rgb.shape).astype(np.float32)
    return np.clip(rgb * gain + offset + noise, 0.0, 1.0).astype(np.float32)


def backdrop(size: int, rng: np.random.Generator, level: float = 0.22) -> np.ndarray:
    """A dark, slightly mottled inspection table (grey-blue), float32 RGB."""
    mottle = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), size / 10)
    mottle = mottle / (np.abs(mottle).max() + 1e-6)
    base = level + 0.03 * mottle
    return np.stack([base * 0.92, base * 0.97, base * 1.08], axis=2).astype(np.float32)


def texture(size: int, rng: np.random.Generator, tint: np.ndarray, name: str) -> Scene:
    """A crop of a texture photograph at a random offset, tinted and relit."""
    src = photo(name)
    crop = min(src.shape) * 3 // 4
    y = int(rng.integers(0, src.shape[0] - crop + 1))
    x = int(rng.integers(0, src.shape[1] - crop + 1))
    patch = transform.resize(src[y : y + crop, x : x + crop], (size, size), anti_aliasing=True)
    gain, offset = lighting(rng)
    rgb = finish(patch[..., None] * tint[None, None, :], rng, gain, offset)
    ones = np.ones((size, size), np.float32)
    return Scene(rgb, ones, rgb.copy(), rounded(crop_y=y, crop_x=x, gain=gain, offset=offset))


@cache
def coin_patch() -> tuple[np.ndarray, np.ndarray]:
    """The largest round coin of ``skimage.data.coins`` and its mask.

    The photo's light is uneven, so a local threshold separates the coins; the largest region that
    is round (eccentricity < 0.5) and solid is the coin.
    """
    img = photo("coins")
    smooth = filters.gaussian(img, 1.5)
    fg = smooth > filters.threshold_local(smooth, 101, offset=-0.02)
    fg = ndimage.binary_fill_holes(ndimage.binary_opening(fg, iterations=2))
    regions = measure.regionprops(measure.label(fg))
    round_ones = [r for r in regions if r.eccentricity < 0.5 and r.solidity > 0.95]
    region = max(round_ones, key=lambda r: r.area)
    y0, x0, y1, x1 = region.bbox
    return img[y0:y1, x0:x1], region.image.astype(np.float32)


def _place(patch: np.ndarray, size: int, scale: float, angle: float, dy: float, dx: float):
    """``patch`` rotated by ``angle`` degrees, scaled to ``scale``·size, shifted by (dy, dx) px."""
    side = max(patch.shape)
    square = np.zeros((side, side), np.float32)
    oy, ox = (side - patch.shape[0]) // 2, (side - patch.shape[1]) // 2
    square[oy : oy + patch.shape[0], ox : ox + patch.shape[1]] = patch
    target = int(round(scale * size))
    small = transform.resize(transform.rotate(square, angle, order=1), (target, target))
    canvas = np.zeros((size, size), np.float32)
    y, x = (size - target) // 2 + int(round(dy)), (size - target) // 2 + int(round(dx))
    canvas[y : y + target, x : x + target] = small
    return canvas


def coin(size: int, rng: np.random.Generator, tint: np.ndarray) -> Scene:
    """The coin photograph on the table, with small rotation and shift."""
    img, mask = coin_patch()
    angle, dy, dx = float(rng.uniform(-20, 20)), *rng.uniform(-3, 3, 2).tolist()
    grey = _place(img * mask, size, 0.72, angle, dy, dx)
    alpha = np.clip(_place(mask, size, 0.72, angle, dy, dx), 0, 1)
    back = backdrop(size, rng)
    obj = np.clip(grey / max(float(grey.max()), 1e-6), 0, 1)[..., None] * tint * 1.1
    gain, offset = lighting(rng)
    rgb = finish(back * (1 - alpha[..., None]) + obj * alpha[..., None], rng, gain, offset)
    return Scene(rgb, alpha, back, rounded(angle=angle, dy=dy, dx=dx, gain=gain))


def _shade(inside: np.ndarray, yy: np.ndarray, xx: np.ndarray, tint: np.ndarray, rng) -> np.ndarray:
    """Metal-like shading: a directional light gradient, a bevel at the edges, brushed streaks."""
    size = inside.shape[0]
    light = 0.85 + 0.35 * (-(yy + xx))
    edge = ndimage.distance_transform_edt(inside > 0.5) / size
    bevel = 0.75 + 0.25 * np.clip(edge * 25, 0, 1)
    streaks = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), (0.6, size / 6))
    return (light * bevel + 0.05 * streaks)[..., None] * tint


def _object(size, rng, tint, sdf_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Scene:
    """A procedurally drawn object (signed distance function) with jitter, shading and shadow."""
    yy, xx = grid(size)
    angle = float(rng.uniform(-8, 8))
    dy, dx = rng.uniform(-0.025, 0.025, 2).tolist()
    t = np.deg2rad(angle)
    ry = np.cos(t) * (yy - dy) - np.sin(t) * (xx - dx)
    rx = np.sin(t) * (yy - dy) + np.cos(t) * (xx - dx)
    alpha = coverage(sdf_fn(ry, rx), size)
    back = backdrop(size, rng)
    shadow = ndimage.shift(ndimage.gaussian_filter(alpha, 2.0), (2, 2), order=1)
    back_shadowed = back * (1 - 0.5 * shadow[..., None])
    obj = _shade(alpha, ry, rx, tint, rng)
    gain, offset = lighting(rng)
    rgb = finish(back_shadowed * (1 - alpha[..., None]) + obj * alpha[..., None], rng, gain, offset)
    return Scene(rgb, alpha, back_shadowed, rounded(angle=angle, dy=dy, dx=dx, gain=gain))


def sdf_washer(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    r = np.hypot(y, x)
    return np.maximum(r - 0.36, 0.15 - r)


def sdf_box(y: np.ndarray, x: np.ndarray, cy: float, cx: float, hy: float, hx: float) -> np.ndarray:
    qy, qx = np.abs(y - cy) - hy, np.abs(x - cx) - hx
    outside = np.hypot(np.maximum(qy, 0), np.maximum(qx, 0))
    return outside + np.minimum(np.maximum(qy, qx), 0)


def sdf_bracket(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """An L-shaped plate with rounded corners and two mounting holes."""
    arm1 = sdf_box(y, x, 0.0, -0.22, 0.36, 0.08) - 0.015
    arm2 = sdf_box(y, x, 0.28, 0.02, 0.08, 0.3) - 0.015
    plate = np.minimum(arm1, arm2)
    holes = np.minimum(np.hypot(y + 0.2, x + 0.22) - 0.04, np.hypot(y - 0.28, x - 0.2) - 0.04)
    return np.maximum(plate, -holes)


def sdf_pill(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A capsule-shaped tablet (a thick segment)."""
    px = np.clip(x, -0.2, 0.2)
    return np.hypot(y, x - px) - 0.15


def render_normal(cfg: dict, size: int, rng: np.random.Generator) -> Scene:
    """A normal image of a demo class described by its ``demo_classes.yaml`` entry."""
    tint = np.asarray(cfg["tint"], np.float32)
    scene = cfg["scene"]
    if scene == "texture":
        return texture(size, rng, tint, cfg["photo"])
    if scene == "coin":
        return coin(size, rng, tint)
    shapes = {"washer": sdf_washer, "bracket": sdf_bracket, "pill": sdf_pill}
    if scene not in shapes:
        raise ValueError(f"unknown demo scene {scene!r}; known: texture, coin, {', '.join(shapes)}")
    return _object(size, rng, tint, shapes[scene])
