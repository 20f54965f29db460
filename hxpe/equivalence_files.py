"""Golden checks from the files on disk: the project's reader, mask resize and AdaCLIP mosaic against
the tensors the authors' dataset classes made of the same files (``<golden>/files/``, written by
``tests/golden/make_golden.py --files``; format in ``tests/golden/README.md``).

* ``image.<stem>``: :func:`hxpe.data.images.load_image` normalised with OpenAI's mean and std
  (the authors' ``ToTensor`` + ``Normalize``), against AnomalyCLIP's ``Dataset`` + ``get_transform``
  (identical to AdaCLIP's ``BaseDataset`` + trainer transforms, checked by the generator);
  tolerance 1e-6 (the same float32 operations: bit for bit expected).
* ``mask.<stem>``: :func:`hxpe.data.torch_dataset.load_mask` against their mask after ``> 0.5``;
  exact (0 differing pixels).
* ``mosaic.image``, ``mosaic.mask``: :func:`hxpe.data.mosaic.combine` of the four records AdaCLIP's
  ``combine_img`` drew (``mosaic.tiles``), transformed as a training item; ``mosaic.label``: the
  item's own label. Image 1e-6, mask exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from hxpe.data.images import load_image, mask_tensor, read_image, read_mask, to_tensor
from hxpe.data.mosaic import combine
from hxpe.data.torch_dataset import load_mask
from hxpe.model.clip_tower import OPENAI_MEAN, OPENAI_STD

IMAGE_ATOL = 1e-6


def normalise(image: torch.Tensor) -> torch.Tensor:
    """torchvision ``Normalize(OPENAI_MEAN, OPENAI_STD)`` arithmetic: ``(x - mean) / std``."""
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return image.sub(mean).div(std)


def files_quantities(files: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(ours, theirs) for every key of ``files/expected.safetensors``."""
    theirs = load_file(str(files / "expected.safetensors"))
    size = json.loads((files / "settings.json").read_text())["image_size"]["value"]
    cases = json.loads((files / "cases.json").read_text())
    meta = json.loads((files / "meta.json").read_text())["test"]
    by_stem = {Path(r["img_path"]).stem: r for records in meta.values() for r in records}
    ours: dict[str, torch.Tensor] = {}
    for stem in cases["images"]:
        ours[f"image.{stem}"] = normalise(load_image(files / by_stem[stem]["img_path"], size))
    for stem in cases["masks"]:
        mask = load_mask(files / by_stem[stem]["mask_path"], size)[0]
        ours[f"mask.{stem}"] = mask.to(torch.uint8)
    if "mosaic.tiles" in theirs:
        tiles = [by_stem[Path(p).stem] for p in cases["tiles"]]
        picked = [tiles[int(i)] for i in theirs["mosaic.tiles"]]
        image, mask = combine(
            [read_image(files / r["img_path"]) for r in picked],
            [read_mask(files / r["mask_path"]) if r["mask_path"] else None for r in picked],
        )
        ours["mosaic.image"] = normalise(to_tensor(image, size))
        ours["mosaic.mask"] = mask_tensor(mask, size)[0].to(torch.uint8)
        ours["mosaic.tiles"] = theirs["mosaic.tiles"]  # replayed from the authors' seed
        ours["mosaic.label"] = torch.tensor(tiles[0]["anomaly"])  # mosaic of item 0: its own
    return ours, theirs


def files_tolerance(name: str) -> tuple[float, float]:
    """Images: 1e-6 absolute; masks, tiles and labels: exact."""
    return (IMAGE_ATOL, 0.0) if name.startswith(("image.", "mosaic.image")) else (0.0, 0.0)
