"""Checks run on every dataset before its index is written.

Each check raises :class:`~hxpe.data.errors.DatasetError` with one message that names the file or
class at fault and says how to fix it. Masks are binarised by one rule everywhere: a pixel is a defect
when it is non-zero (``hxpe.data.images.read_mask`` applies it). VisA's masks hold small
integers, MVTec's hold 0/255; both are valid, and any other non-binary mask is reported once and
binarised by that rule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from hxpe.data.errors import DatasetError
from hxpe.data.images import read_image

logger = logging.getLogger(__name__)

BINARISATION_RULE = "a mask pixel is a defect when it is non-zero"
MAX_LISTED = 10
DEFAULT_MASK_SUFFIX = "_mask"


def listing(items: Iterable[object], limit: int = MAX_LISTED) -> str:
    """A short, sorted listing of names for an error message.

    >>> listing(["b", "a"])
    'a, b'
    >>> listing(range(12), limit=2)
    '0, 1 … (12 in all)'
    """
    names = sorted(str(i) for i in items)
    text = ", ".join(names[:limit])
    return text if len(names) <= limit else f"{text} … ({len(names)} in all)"


def require_root(root: Path, download_hint: str = "") -> Path:
    """The dataset root as an existing directory, or a :class:`DatasetError` saying where to get it."""
    if not root.exists():
        hint = f" {download_hint}" if download_hint else ""
        raise DatasetError(
            f"Dataset root {root} does not exist. Point --root (or the source's `root` in the params "
            f"file) at the unpacked dataset.{hint}"
        )
    if not root.is_dir():
        raise DatasetError(f"Dataset root {root} is a file, not a folder; pass its parent folder.")
    return root


def require_dir(path: Path, root: Path, what: str) -> Path:
    """``path`` as an existing directory, or an error naming the missing folder relative to ``root``."""
    if not path.is_dir():
        present = listing(p.name for p in path.parent.iterdir() if p.is_dir()) or "nothing"
        raise DatasetError(
            f"Wrong layout under {root}: expected folder {relative_posix(path, root)} ({what}) is "
            f"missing; {relative_posix(path.parent, root) or '.'} holds: {present}. Check that --root "
            f"points at the folder that holds the class folders."
        )
    return path


def relative_posix(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string; an error when it lies outside the root."""
    try:
        rel = path.relative_to(root)
    except ValueError as err:
        raise DatasetError(
            f"{path} lies outside the dataset root {root}; every image and mask must live under the "
            f"root (index paths are stored relative to it)."
        ) from err
    return rel.as_posix()


def safe_join(root: Path, rel: str, where: str) -> Path:
    """``root / rel`` for a path read from a file (a CSV), refusing absolute paths and ``..``."""
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise DatasetError(
            f"{where}: path {rel!r} escapes the dataset root {root}; paths must be relative to the "
            f"root and must not contain '..'. Fix the file or move the data under the root."
        )
    return root.joinpath(*p.parts)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as the project's reader sees it (fully decoded, so truncated
    files are caught; EXIF orientation applied)."""
    try:
        return read_image(path).size
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(
            f"Cannot read image {path}: {err}. The file is unreadable or truncated; re-download or "
            f"re-extract it (or delete it and pass --allow-count-mismatch)."
        ) from err


def mask_stats(path: Path) -> tuple[tuple[int, int], bool, int]:
    """(size, is_binary, defect_pixels) of a mask; binary means its values are {0, one value}."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(
            f"Cannot read mask {path}: {err}. Re-download or re-extract the ground-truth masks."
        ) from err
    values = np.unique(arr)
    nonzero = values[values > 0]
    return (arr.shape[1], arr.shape[0]), len(nonzero) <= 1, int((arr > 0).sum())


def check_pairs(
    images: Sequence[Path], masks: Sequence[Path], mask_suffix: str, where: str
) -> dict[Path, Path]:
    """Pair images with masks by file stem; list unpaired files.

    A mask named ``<stem><mask_suffix>.<ext>``, ``<stem>_mask.<ext>`` or ``<stem>.<ext>`` belongs to the
    image ``<stem>.<any ext>`` (BTAD mixes .bmp images with .png masks).

    >>> pairs = check_pairs([Path("a/000.png")], [Path("m/000_mask.png")], "_mask", "x")
    >>> pairs[Path("a/000.png")].name
    '000_mask.png'
    """
    by_stem: dict[str, Path] = {}
    for m in masks:
        by_stem.setdefault(m.stem, m)
        for suffix in {mask_suffix, DEFAULT_MASK_SUFFIX} - {""}:
            if m.stem.endswith(suffix):
                by_stem[m.stem[: -len(suffix)]] = m
    pairs = {img: by_stem[img.stem] for img in images if img.stem in by_stem}
    lonely_images = [i.name for i in images if i not in pairs]
    used = {m for m in pairs.values()}
    lonely_masks = [m.name for m in masks if m not in used]
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"images without a mask: {listing(lonely_images)}")
        if lonely_masks:
            parts.append(f"masks without an image: {listing(lonely_masks)}")
        raise DatasetError(
            f"Image/mask pairing failed in {where} (a mask is matched to its image by file stem, "
            f"'<stem>{mask_suffix}.<ext>'): {'; '.join(parts)}. Restore the missing files or remove "
            f"the extra ones."
        )
    return pairs


def check_mask_matches(image: Path, mask: Path) -> bool:
    """Check that a mask can be read and has its image's size; return whether it is binary."""
    img_size = image_size(image)
    size, binary, _ = mask_stats(mask)
    if size != img_size:
        raise DatasetError(
            f"Mask {mask} is {size[0]}x{size[1]} but its image {image} is "
            f"{img_size[0]}x{img_size[1]}; a mask must have its image's size. Re-extract the mask "
            f"or resize it with nearest-neighbour interpolation."
        )
    return binary


def report_non_binary(masks: Sequence[Path], dataset: str) -> None:
    """Log, once per dataset, which masks are not binary and how they are read."""
    if masks:
        logger.warning(
            "%s: %d masks are not binary (e.g. %s); they are binarised by the rule: %s.",
            dataset,
            len(masks),
            listing((m.name for m in masks), limit=3),
            BINARISATION_RULE,
        )
