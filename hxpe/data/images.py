"""The one image reader of the project: evaluation, training, ``hxpe predict``, the app and the agent.

Every picture, whatever its file format or Pillow mode, becomes 8-bit RGB by the same rules:

* **EXIF orientation** is applied (a phone photo stored sideways is read upright).
* **Transparency** (RGBA, LA, PA, or a palette with a transparent index) is **composited over black**:
  a pixel of alpha ``a`` and colour ``c`` becomes ``round(c * a / 255)``. Fully transparent pixels are
  black, whatever colour the file stores under them.
* **Palette** (P) images are expanded through their palette.
* **High bit depth** grey images (16-bit ``I;16*``, 32-bit ``I``) are rescaled by their *true* bit
  depth ``b`` (the TIFF ``BitsPerSample`` tag when the file has one, 16 for PNG and the ``I;16``
  modes, 32 otherwise): ``v -> round(v * 255 / (2**b - 1))``, so 65535 is white and 32768 mid-grey.
  Nothing is clipped and the result does not depend on the image's content. Float (``F``) images are
  taken as intensities in [0, 1] (``round(v * 255)``, clipped). Pillow itself reduces 16-bit *colour*
  PNGs to 8 bits when it decodes them (it keeps the high byte).
* **Grayscale** (L, 1, and the grey results above) is replicated to three equal channels; other modes
  (CMYK, YCbCr, LAB, HSV) go through Pillow's own conversion to RGB.
* Animated files give their first frame.

Masks (:func:`read_mask`) follow the stated protocol rule: a pixel is a defect when its raw value is
non-zero in any colour channel (alpha ignored; palettes expanded), after the same EXIF orientation.

Model inputs (:func:`to_tensor`) are the RGB image resized bicubically to ``size``×``size`` (no crop),
as float32 ``[3, size, size]`` in [0, 1]. Masks at a resolution (:func:`mask_tensor`) go through the
authors' steps: a 0/255 PIL mask, torchvision's ``Resize`` (Pillow's antialiased bilinear), ``> 0.5``.

Example:
    >>> from hxpe.data.images import read_image, to_tensor
    >>> image = read_image(part_png)
    >>> image.mode, image.size
    ('RGB', (150, 100))
    >>> x = to_tensor(image, 224)
    >>> x.shape, x.dtype, 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    (torch.Size([3, 224, 224]), torch.float32, True)

    Half-transparent orange over black:
    >>> Image.new("RGBA", (2, 1), (200, 100, 50, 128)).save(tmp_path / "half.png")
    >>> read_image(tmp_path / "half.png").getpixel((0, 0))
    (100, 50, 25)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from hxpe.paths import why_missing

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_TIFF_BITS_PER_SAMPLE = 258


class ImageReadError(ValueError):
    """A file that cannot be used as an image (the message says which, why and what to do)."""


class ImageTooLargeError(ImageReadError):
    """An image with more pixels than the caller allows (the message states the limit)."""


def bit_depth(im: Image.Image) -> int:
    """Bits per sample of a high-depth grey image (see the module docstring for the rule)."""
    tag = getattr(im, "tag_v2", None)
    if tag is not None and _TIFF_BITS_PER_SAMPLE in tag:
        bits = tag[_TIFF_BITS_PER_SAMPLE]
        bits = bits[0] if isinstance(bits, tuple) else bits
        if isinstance(bits, int) and 1 <= bits <= 32:
            return bits
    if im.mode.startswith("I;16") or im.format == "PNG":
        return 16
    return 32


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    values = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        scaled = np.clip(np.nan_to_num(values), 0.0, 1.0) * 255.0
    else:
        scaled = np.clip(values, 0, None) * (255.0 / (2 ** bit_depth(im) - 1))
        scaled = np.minimum(scaled, 255.0)  # only values beyond the stated depth can exceed 255
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def _over_black(im: Image.Image) -> Image.Image:
    rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
    rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255  # round(c * a / 255) in integers
    return Image.fromarray(rgb.astype(np.uint8), mode="RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB by the rules of the module docstring (EXIF not applied here)."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        return _over_black(im)
    if im.mode in HIGH_DEPTH_MODES or im.mode == "F":
        return _high_depth_to_l(im).convert("RGB")
    return im.convert("RGB")


def _open(path: str | Path, what: str, max_pixels: int | None) -> Image.Image:
    """Decode ``path`` fully (EXIF orientation applied); errors say what to do."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(why_missing(p, what))
    if not p.is_file():
        raise ImageReadError(f"{p} is not a file; pass the path of one {what}.")
    try:
        with Image.open(p) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(
                    f"{p.name} is {w}×{h} = {w * h:,} pixels; the limit is {max_pixels:,} "
                    f"pixels ({max_pixels / 1e6:g} megapixels). Downscale it first."
                )
            im.load()
            return ImageOps.exif_transpose(im) or im.copy()
    except UnidentifiedImageError as err:
        raise ImageReadError(
            f"{p.name} is not an image Pillow can read (PNG, JPEG, TIFF, BMP, WebP, GIF, ...); "
            f"convert it to PNG first."
        ) from err
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(
            f"{p.name} is too large for Pillow's safety limit ({err}); downscale it first."
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ImageReadError):
            raise
        raise ImageReadError(
            f"Cannot decode {p.name}: {err}. The file is probably truncated or corrupt; "
            f"re-export or re-download it."
        ) from err


def read_image(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """``path`` as an 8-bit RGB image (module docstring rules); more than ``max_pixels`` is an error."""
    return to_rgb(_open(path, "image", max_pixels))


def read_mask(path: str | Path) -> np.ndarray:
    """``path`` as a bool ``[H, W]`` defect mask: non-zero in any colour channel (alpha ignored)."""
    im = _open(path, "mask", None)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    raw = np.asarray(im)
    if raw.ndim == 3:
        bands = im.getbands()
        colour = [i for i, b in enumerate(bands) if b not in ("A", "a")]
        return (raw[..., colour] != 0).any(axis=-1)
    return raw != 0


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """``[3, size, size]`` float32 in [0, 1], resized bicubically (no crop) from an RGB image."""
    if image.mode != "RGB":
        raise ValueError(f"to_tensor needs an RGB image (use read_image); got mode {image.mode}")
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """The model input of the file at ``path``: :func:`to_tensor` of :func:`read_image`."""
    return to_tensor(read_image(path), size)


def mask_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    """A bool mask as float32 ``[1, size, size]``, resized as both authors resize masks.

    AnomalyCLIP (``dataset.py:71-72``, ``utils.py:16-20``) and AdaCLIP (``dataset/base_dataset.py:120-121``,
    ``method/trainer.py:56-60``) build a 0/255 PIL ``L`` mask, apply torchvision's
    ``Resize((size, size))`` (on a PIL image that is Pillow's ``resize`` with ``BILINEAR``, which
    widens its filter when it shrinks: antialiased) and ``ToTensor`` (``v / 255`` in float32), and
    threshold at ``> 0.5`` (AnomalyCLIP ``test.py:85``, ``train.py:65``; AdaCLIP
    ``method/trainer.py:117``). This does the same steps, so thin scratches
    in large masks keep the pixels the authors keep.
    """
    pil = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    resized = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    fraction = torch.from_numpy(resized.copy()).to(torch.float32).div(255)
    return (fraction > 0.5).to(torch.float32)[None]
