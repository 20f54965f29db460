"""Synthetic defects for the demo data, blended into a normal scene, each with its pixel mask.

Six types of varied size and shape: ``scratch`` (a thin bright curve), ``crack`` (a dark jagged
line with a branch), ``hole`` (a dark shaded pit on textures, a missing piece on objects), ``stain``
(an irregular discoloured blob), ``foreign_object`` (a small textured chip with a shadow) and
``deformation`` (a local warp of the surface or outline). Each function takes the scene and a random
generator and returns the new image, the boolean mask and the parameters drawn (for ``defects.csv``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from hxpe.data.demo_scenes import Scene

DefectResult = tuple[np.ndarray, np.ndarray, dict]
MIN_MASK_PIXELS = 4


def pick_centre(scene: Scene, rng: np.random.Generator, margin: float = 0.15) -> tuple[int, int]:
    """A pixel well inside the object (or anywhere inside the margins for textures)."""
    size = scene.alpha.shape[0]
    inner = ndimage.binary_erosion(scene.alpha > 0.9, iterations=max(2, size // 32))
    lo, hi = int(margin * size), int((1 - margin) * size)
    box = np.zeros_like(inner)
    box[lo:hi, lo:hi] = True
    ys, xs = np.nonzero(inner & box if (inner & box).any() else scene.alpha > 0.5)
    k = int(rng.integers(len(ys)))
    return int(ys[k]), int(xs[k])


def blend(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = np.clip(alpha, 0, 1)[..., None]
    return (image * (1 - a) + colour * a).astype(np.float32)


def stroke(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased coverage of a polyline given by dense ``points`` (N x 2, y/x pixels)."""
    canvas = np.ones((size, size), bool)
    pts = np.clip(np.round(points).astype(int), 0, size - 1)
    canvas[pts[:, 0], pts[:, 1]] = False
    dist = ndimage.distance_transform_edt(canvas)
    return np.clip(width / 2 + 0.5 - dist, 0, 1).astype(np.float32)


def blob(size: int, centre: tuple[int, int], radius: float, rng, roughness: float) -> np.ndarray:
    """A soft irregular blob: a disc whose edge is perturbed by smoothed noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(yy - centre[0], xx - centre[1]) / max(radius, 1.0)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), max(radius / 3, 1.0))
    noise /= np.abs(noise).max() + 1e-6
    field = 1.0 - r + roughness * noise
    return np.clip(field * radius / 2, 0, 1).astype(np.float32)


def _curve(c: tuple[int, int], length: float, rng) -> np.ndarray:
    """A quadratic Bézier of about ``length`` pixels through ``c``."""
    angle = rng.uniform(0, np.pi)
    d = np.array([np.sin(angle), np.cos(angle)]) * length / 2
    bend = np.array([-d[1], d[0]]) * rng.uniform(-0.5, 0.5)
    p0, p2 = np.array(c) - d, np.array(c) + d
    p1 = np.array(c) + bend
    t = np.linspace(0, 1, int(length * 3) + 2)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def scratch(scene: Scene, rng: np.random.Generator) -> DefectResult:
    size = scene.alpha.shape[0]
    c = pick_centre(scene, rng)
    length, width = float(rng.uniform(0.18, 0.45) * size), float(rng.uniform(1.0, 2.2))
    a = stroke(size, _curve(c, length, rng), width) * scene.alpha
    colour = np.clip(scene.image + rng.uniform(0.3, 0.45), 0, 1)
    image = blend(scene.image, colour, 0.85 * a)
    return image, a > 0.3, {"cy": c[0], "cx": c[1], "length_px": length, "width_px": width}


def _random_walk(c: tuple[int, int], steps: int, step: float, rng) -> np.ndarray:
    heading = rng.uniform(0, 2 * np.pi)
    pts = [np.array(c, float)]
    for _ in range(steps):
        heading += rng.normal(0, 0.45)
        pts.append(pts[-1] + step * np.array([np.sin(heading), np.cos(heading)]))
    dense = [np.linspace(a, b, 4) for a, b in zip(pts[:-1], pts[1:], strict=True)]
    return np.concatenate(dense)


def crack(scene: Scene, rng: np.random.Generator) -> DefectResult:
    size = scene.alpha.shape[0]
    c = pick_centre(scene, rng)
    steps, step = int(rng.integers(8, 18)), size / 40
    main = _random_walk(c, steps, step, rng)
    branch = _random_walk(tuple(main[len(main) // 2].astype(int)), steps // 2, step, rng)
    width = float(rng.uniform(1.0, 2.5))
    a = np.maximum(stroke(size, main, width), stroke(size, branch, width * 0.7)) * scene.alpha
    rim = ndimage.shift(a, (1, 1), order=1) * (1 - a)
    image = blend(scene.image, np.clip(scene.image + 0.15, 0, 1), 0.5 * rim)
    image = blend(image, scene.image * 0.18, 0.95 * a)
    return image, a > 0.3, {"cy": c[0], "cx": c[1], "steps": steps, "width_px": width}


def hole(scene: Scene, rng: np.random.Generator) -> DefectResult:
    size = scene.alpha.shape[0]
    c = pick_centre(scene, rng)
    radius = float(rng.uniform(0.05, 0.12) * size)
    a = blob(size, c, radius, rng, roughness=0.25) * scene.alpha
    is_object = bool((scene.alpha < 0.5).any())
    if is_object:  # a missing piece: the table shows through
        image = blend(scene.image, scene.background, a)
    else:  # a pit: dark, darker towards its centre, with a lit rim
        depth = ndimage.gaussian_filter(a, radius / 4)
        image = blend(scene.image, scene.image * 0.15, np.clip(a * (0.6 + 0.4 * depth), 0, 1))
        rim = ndimage.shift(a, (-1.5, -1.5), order=1) * (1 - a)
        image = blend(image, np.clip(scene.image + 0.2, 0, 1), 0.6 * rim)
    params = {"cy": c[0], "cx": c[1], "radius_px": radius, "missing_part": is_object}
    return image, a > 0.5, params


def stain(scene: Scene, rng: np.random.Generator) -> DefectResult:
    size = scene.alpha.shape[0]
    c = pick_centre(scene, rng)
    radius = float(rng.uniform(0.07, 0.18) * size)
    a = ndimage.gaussian_filter(blob(size, c, radius, rng, roughness=0.45), 1.5) * scene.alpha
    tint = rng.choice(np.array([[0.55, 0.38, 0.18], [0.25, 0.22, 0.35], [0.65, 0.6, 0.2]]))
    strength = float(rng.uniform(0.55, 0.8))
    image = blend(scene.image, scene.image * tint * 1.2, strength * a)
    params = {"cy": c[0], "cx": c[1], "radius_px": radius, "strength": strength}
    return image, a > 0.35, params | {"tint": [round(float(t), 3) for t in tint]}


def foreign_object(scene: Scene, rng: np.random.Generator) -> DefectResult:
    size = scene.alpha.shape[0]
    c = pick_centre(scene, rng)
    radius = float(rng.uniform(0.03, 0.08) * size)
    a = blob(size, c, radius, rng, roughness=0.6)
    shadow = ndimage.shift(ndimage.gaussian_filter(a, 1.5), (2, 2), order=1)
    image = blend(scene.image, scene.image * 0.45, 0.7 * shadow * (1 - a))
    colour = np.asarray(rng.uniform(0.1, 0.9, 3), np.float32)
    grain = 0.85 + 0.3 * rng.random((size, size, 1)).astype(np.float32)
    image = blend(image, np.clip(colour * grain, 0, 1), a)
    params = {"cy": c[0], "cx": c[1], "radius_px": radius, "colour": colour.round(3).tolist()}
    return image, a > 0.5, params


def deformation(scene: Scene, rng: np.random.Generator) -> DefectResult:
    size = scene.alpha.shape[0]
    is_object = bool((scene.alpha < 0.5).any())
    if is_object:  # dent the outline: centre near the object's edge
        edge = (scene.alpha > 0.3) & (scene.alpha < 0.7)
        ys, xs = np.nonzero(edge)
        k = int(rng.integers(len(ys)))
        c = (int(ys[k]), int(xs[k]))
    else:
        c = pick_centre(scene, rng)
    radius = float(rng.uniform(0.1, 0.18) * size)
    strength = float(rng.uniform(0.35, 0.6) * (1.6 if is_object else 1.0)) * rng.choice([-1, 1])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - c[0], xx - c[1]
    r = np.hypot(dy, dx) / radius
    fall = np.where(r < 1, (1 - r**2) ** 2, 0).astype(np.float32)
    disp = strength * radius * 0.5 * fall
    norm = np.maximum(np.hypot(dy, dx), 1e-6)
    sy, sx = yy - disp * dy / norm, xx - disp * dx / norm
    warped = np.stack(
        [
            ndimage.map_coordinates(scene.image[..., k], [sy, sx], order=1, mode="reflect")
            for k in range(3)
        ],
        axis=2,
    )
    changed = np.abs(warped - scene.image).max(axis=2) > 0.06
    mask = (np.abs(disp) > 1.0) & (changed | ~is_object)
    mask = ndimage.binary_closing(mask, iterations=2) & (np.abs(disp) > 1.0)
    params = {"cy": c[0], "cx": c[1], "radius_px": radius, "strength": float(strength)}
    return warped.astype(np.float32), mask, params


DEFECTS: dict[str, Callable[[Scene, np.random.Generator], DefectResult]] = {
    "scratch": scratch,
    "crack": crack,
    "hole": hole,
    "stain": stain,
    "foreign_object": foreign_object,
    "deformation": deformation,
}


def apply_defect(
    kind: str, scene: Scene, rng: np.random.Generator, tries: int = 10
) -> DefectResult:
    """Draw a defect of type ``kind``; redraw until its mask has at least a few pixels."""
    if kind not in DEFECTS:
        raise ValueError(f"unknown demo defect type {kind!r}; known: {', '.join(DEFECTS)}")
    for _ in range(tries):
        image, mask, params = DEFECTS[kind](scene, rng)
        if mask.sum() >= MIN_MASK_PIXELS:
            return image, mask, params
    raise RuntimeError(f"could not place a visible {kind!r} defect in {tries} tries")
