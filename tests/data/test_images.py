"""The project's one image reader (hxpe.data.images): one kind of file per test, exact pixel values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hxpe.data.images import (
    ImageReadError,
    ImageTooLargeError,
    load_image,
    read_image,
    read_mask,
    to_tensor,
)
from hxpe.data.torch_dataset import IndexDataset, load_mask

EXIF_ORIENTATION = 0x0112


def _halves(width: int = 64, height: int = 32) -> np.ndarray:
    """Left half red, right half blue (big flat blocks survive JPEG almost exactly)."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return arr


def _rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90° clockwise to display"
    return exif


def test_exif_orientation_of_a_jpeg_is_applied(tmp_path):
    path = tmp_path / "phone.jpg"
    Image.fromarray(_halves()).save(path, quality=100, exif=_rotated_exif())
    rgb = np.asarray(read_image(path))
    assert rgb.shape == (64, 32, 3)  # stored 64 wide × 32 high, read upright: 32 wide × 64 high
    top, bottom = rgb[4:28, 4:28].reshape(-1, 3), rgb[36:60, 4:28].reshape(-1, 3)
    assert np.abs(top.astype(int) - (255, 0, 0)).max() <= 3  # the stored left half is on top
    assert np.abs(bottom.astype(int) - (0, 0, 255)).max() <= 3


def test_exif_orientation_of_a_png_is_applied_exactly(tmp_path):
    path = tmp_path / "rotated.png"
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    Image.fromarray(stored).save(path, exif=_rotated_exif())
    np.testing.assert_array_equal(np.asarray(read_image(path)), np.rot90(stored, k=-1))


def test_rgba_is_composited_over_black(tmp_path):
    path = tmp_path / "rgba.png"
    pixels = np.array(
        [[[200, 100, 50, 128], [255, 255, 255, 0], [10, 20, 30, 255], [255, 0, 0, 1]]], np.uint8
    )
    Image.fromarray(pixels, mode="RGBA").save(path)
    expected = [[[100, 50, 25], [0, 0, 0], [10, 20, 30], [1, 0, 0]]]  # round(c * a / 255)
    np.testing.assert_array_equal(np.asarray(read_image(path)), expected)


def test_palette_is_expanded_and_its_transparent_index_is_black(tmp_path):
    palette = [0, 0, 0, 250, 10, 10, 10, 250, 10] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1, 2, 1]], np.uint8)
    im = Image.fromarray(indices, mode="P")
    im.putpalette(palette)
    plain = tmp_path / "palette.png"
    im.save(plain)
    np.testing.assert_array_equal(
        np.asarray(read_image(plain)), [[[0, 0, 0], [250, 10, 10], [10, 250, 10], [250, 10, 10]]]
    )
    holed = tmp_path / "palette_transparent.png"
    im.save(holed, transparency=1)
    np.testing.assert_array_equal(
        np.asarray(read_image(holed)), [[[0, 0, 0], [0, 0, 0], [10, 250, 10], [0, 0, 0]]]
    )


def test_16_bit_is_rescaled_by_its_bit_depth_not_clipped(tmp_path):
    path = tmp_path / "depth16.png"
    values = np.array([[0, 257, 1000, 32768, 65535, 200]], np.uint16)
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # Pillow keeps the 16 bits: the reader does the rescaling
    # round(v * 255 / 65535): 200 is a very dark 16-bit value, not an 8-bit 200
    expected = np.array([0, 1, 4, 128, 255, 1], np.uint8)
    rgb = np.asarray(read_image(path))
    np.testing.assert_array_equal(rgb, np.repeat(expected[None, :, None], 3, axis=2))


def test_float_tiff_is_taken_as_intensities_in_0_1(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 1.7, -0.2]], np.float32), mode="F").save(path)
    rgb = np.asarray(read_image(path))
    np.testing.assert_array_equal(rgb[..., 0], [[0, 128, 255, 255, 0]])


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 17, 128, 255]], np.uint8), mode="L").save(path)
    rgb = np.asarray(read_image(path))
    np.testing.assert_array_equal(rgb, np.repeat(np.array([[0, 17, 128, 255]])[..., None], 3, 2))
    bilevel = tmp_path / "bilevel.png"
    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(bilevel)
    np.testing.assert_array_equal(np.asarray(read_image(bilevel)), [[[0, 0, 0], [255, 255, 255]]])


def test_masks_are_non_zero_in_any_colour_channel(tmp_path):
    visa = tmp_path / "visa.png"
    Image.fromarray(np.array([[0, 1, 2, 0]], np.uint8), mode="L").save(visa)
    np.testing.assert_array_equal(read_mask(visa), [[False, True, True, False]])
    rgba = tmp_path / "rgba_mask.png"
    pixels = np.array([[[0, 0, 0, 255], [0, 0, 3, 255], [0, 0, 0, 0], [9, 0, 0, 0]]], np.uint8)
    Image.fromarray(pixels, mode="RGBA").save(rgba)
    np.testing.assert_array_equal(read_mask(rgba), [[False, True, False, True]])  # alpha ignored
    tensor = load_mask(visa, 8)
    assert tensor.shape == (1, 8, 8) and set(tensor.unique().tolist()) <= {0.0, 1.0}


def test_too_large_and_unreadable_files_say_so(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(big)
    with pytest.raises(
        ImageTooLargeError,
        match=r"300×200 = 60,000 pixels; the limit is 50,000 pixels \(0.05 megapixels\)",
    ):
        read_image(big, max_pixels=50_000)
    assert read_image(big, max_pixels=60_000).size == (300, 200)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(ImageReadError, match="notes.png is not an image Pillow can read"):
        read_image(text)
    with pytest.raises(ValueError, match="needs an RGB image"):
        to_tensor(Image.new("L", (4, 4)), 4)


def _one_image_index(root: Path, rel: str) -> object:
    from hxpe.data.index import DatasetIndex

    frame = pd.DataFrame(
        [
            {
                "image_id": "toy/w/test/good/x",
                "dataset": "toy",
                "cls": "w",
                "split": "test",
                "label": 0,
                "defect_type": "good",
                "image": rel,
                "mask": "",
                "sha256": "",
            }
        ]
    )
    return DatasetIndex(name="toy", root=root, frame=frame)


@pytest.mark.parametrize("kind", ["rgba", "depth16", "exif"])
def test_evaluation_dataset_reads_what_the_reader_reads(tmp_path, kind):
    rng = np.random.default_rng(1)
    path = tmp_path / f"{kind}.png"
    if kind == "rgba":
        Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), mode="RGBA").save(path)
    elif kind == "depth16":
        Image.fromarray(rng.integers(0, 65536, (20, 30), dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
            path, exif=_rotated_exif()
        )
    item = IndexDataset(_one_image_index(tmp_path, path.name), 16, "test")[0]
    expected = to_tensor(read_image(path), 16)
    assert torch.equal(item["image"], expected)
    assert torch.equal(load_image(path, 16), expected)
