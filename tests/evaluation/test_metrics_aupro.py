"""AUPRO in both conventions against straightforward reference loops written here."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc

from hxpe.evaluation.aupro_loop import aupro_anomalyclip_loop
from hxpe.evaluation.metrics import (
    UndefinedMetricError,
    anomalyclip_auc,
    aupro,
    label_regions,
    pixel_metrics,
)

EIGHT = np.ones((3, 3), dtype=bool)


def reference_regions(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(image index, boolean region mask) for every 8-connected region."""
    out = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask > 0, structure=EIGHT)
        out += [(i, labelled == k) for k in range(1, n + 1)]
    return out


def reference_anomalyclip(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """cal_pro_score as described: label per threshold, score > t, keep FPR < limit, rescale."""
    maps = maps.astype(np.float32)
    lo, hi = maps.min(), maps.max()
    normal = masks == 0
    fprs, pros = [], []
    for th in np.arange(lo, hi, (hi - lo) / 200):
        binary = maps > th
        overlaps = [binary[i][r].sum() / r.sum() for i, r in reference_regions(masks)]
        pros.append(np.mean(overlaps))
        fprs.append((binary & normal).sum() / normal.sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < limit
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return float(auc(f, pros[keep]))


def reference_exact(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """PRO at every distinct score (score >= t), trapezoid up to the limit with interpolation."""
    regions = reference_regions(masks)
    normal = masks == 0
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        xs.append((hit & normal).sum() / normal.sum())
        ys.append(np.mean([hit[i][r].sum() / r.sum() for i, r in regions]))
    area = 0.0
    for j in range(1, len(xs)):
        x0, y0, x1, y1 = xs[j - 1], ys[j - 1], xs[j], ys[j]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def random_case(seed: int, n: int = 4, size: int = 40, levels: int | None = None):
    """Masks with several elliptical regions per anomalous image, maps correlated with them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(1, n):  # image 0 stays normal
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(5, size - 5, 2)
            ay, ax = rng.uniform(2, 7, 2)
            masks[i][((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1] = 1
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), (0, 1, 1)) + 0.3 * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return masks, maps.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anomalyclip_convention_matches_reference_loop(seed: int) -> None:
    masks, maps = random_case(seed)
    expected = reference_anomalyclip(masks, maps)
    assert aupro(masks, maps, "anomalyclip", device="cpu") == pytest.approx(expected, abs=1e-10)
    assert aupro_anomalyclip_loop(masks, maps) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize(("seed", "levels"), [(0, None), (1, 25), (2, 8)])
def test_exact_convention_matches_reference_loop(seed: int, levels: int | None) -> None:
    masks, maps = random_case(seed, n=3, size=24, levels=levels)
    expected = reference_exact(masks, maps)
    assert aupro(masks, maps, "exact", device="cpu") == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("convention", ["anomalyclip", "exact"])
def test_perfect_inverted_and_random_maps(convention: str) -> None:
    masks, _ = random_case(5, n=6, size=64)
    rng = np.random.default_rng(0)
    noise = 0.05 * rng.random(masks.shape).astype(np.float32)
    perfect = masks.astype(np.float32)
    assert aupro(masks, perfect, convention, device="cpu") == pytest.approx(1.0)
    assert aupro(masks, 1 - perfect + noise, convention, device="cpu") < 0.02
    rand = rng.random(masks.shape).astype(np.float32)
    # A random map has PRO(FPR) ~ FPR: the area up to 0.3, normalised, is ~0.15.
    assert 0.11 < aupro(masks, rand, convention, device="cpu") < 0.19


def test_regions_are_eight_connected_and_labelled_once() -> None:
    masks = np.zeros((2, 6, 6), dtype=np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = 1  # diagonal neighbours: one region
    masks[1, 0, 0] = masks[1, 5, 5] = 1  # two regions
    regions = label_regions(masks)
    assert regions.n_regions == 3
    assert regions.areas.tolist() == [2, 1, 1]


@pytest.mark.parametrize("convention", ["anomalyclip", "exact"])
def test_undefined_cases_raise_clear_errors(convention: str) -> None:
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    with pytest.raises(UndefinedMetricError, match="no defect region"):
        aupro(np.zeros((2, 8, 8)), maps, convention)
    with pytest.raises(UndefinedMetricError, match="no normal pixel"):
        aupro(np.ones((2, 8, 8)), maps, convention)
    with pytest.raises(ValueError, match="differ in shape"):
        aupro(np.zeros((2, 8, 8)), maps[:1], convention)


def test_constant_map() -> None:
    masks, _ = random_case(0, n=2, size=16)
    const = np.full(masks.shape, 0.5, dtype=np.float32)
    with pytest.raises(UndefinedMetricError, match="constant"):
        aupro(masks, const, "anomalyclip")
    # Exact convention: one operating point (1, 1); the diagonal's area up to 0.3 is 0.045.
    assert aupro(masks, const, "exact") == pytest.approx(0.15)


def test_anomalyclip_auc_degenerate_windows() -> None:
    assert anomalyclip_auc(np.array([0.9, 0.5]), np.array([1.0, 0.5]), 0.3) == 0.0
    assert anomalyclip_auc(np.array([0.9, 0.0, 0.0]), np.array([1.0, 0.8, 0.6]), 0.3) == 0.7


def test_pixel_metrics_skip_rather_than_nan() -> None:
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    empty = pixel_metrics(np.zeros((3, 8, 8)), maps, ["anomalyclip", "exact"], device="cpu")
    assert empty.values == {}
    assert set(empty.skipped) == {
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1_max",
        "pixel_aupro_anomalyclip",
        "pixel_aupro_exact",
    }
    masks, maps = random_case(1)
    full = pixel_metrics(masks, maps, ["anomalyclip", "exact"], device="cpu")
    assert full.skipped == {}
    assert all(0 <= v <= 1 for v in full.values.values())
