"""``make demo-backbones``: train the demo CLIP and DINOv2 from a seed and write them, with their
provenance, where the demo profile loads them.

Output folder (``hxpe/model/weights/demo/`` by default), one flat folder::

    open_clip_model.safetensors   open_clip state dict of hxpe-demo-clip (configs/hxpe-demo-clip.json)
    config.json, model.safetensors   Dinov2Model.save_pretrained (from_pretrained on the folder)
    provenance.json   configs, seed, generator version, recipes, SHA-256 of every file, timings
    curve.csv, curve.png   the training curves of both models
    README.md   what the backbones saw and how they were made (written from provenance.json)

``--compare DIR`` checks a retrained set against a committed one: the SHA-256 of every weights file
first; where the files differ (CPU kernels of another machine or library build need not be
bit-reproducible), the final losses must agree within :data:`LOSS_RTOL` and the held-out zero-shot
AUROCs within :data:`AUROC_ATOL`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from hxpe.backbones.clip_pretrain import ClipRecipe, train_clip
from hxpe.backbones.data import PretrainSet
from hxpe.backbones.dino_distill import DinoRecipe, train_dinov2
from hxpe.backbones.scenes import GENERATOR_VERSION
from hxpe.backbones.schedule import Curve
from hxpe.backbones.validate import VALIDATION_OFFSET, zero_shot
from hxpe.hashing import file_sha256
from hxpe.model.loading import CONFIG_DIR, seeded
from hxpe.versions import software_versions

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "model" / "weights" / "demo"
CLIP_NAME = "hxpe-demo-clip"
CLIP_CONFIG = CONFIG_DIR / f"{CLIP_NAME}.json"
DINO_CONFIG = CONFIG_DIR / "hxpe-demo-dinov2.json"
CLIP_FILE = "open_clip_model.safetensors"
DINO_FILES = ("config.json", "model.safetensors")
PROVENANCE = "provenance.json"
LOSS_RTOL = 0.05  # relative tolerance of the final losses when the weights are not bit-identical
AUROC_ATOL = 1.0  # and of the held-out zero-shot AUROCs (x100)
THREADS = (
    1  # one thread: CPU reductions in a fixed order, and no OpenMP spin-waits on a shared machine
)


@dataclasses.dataclass(frozen=True)
class BackboneRecipe:
    """Everything that determines the weights (with the code and the library versions)."""

    seed: int = 1000
    n_scenes: int = 4000
    n_validation: int = 160
    clip: ClipRecipe = ClipRecipe()
    dinov2: DinoRecipe = DinoRecipe()


def new_clip(seed: int) -> tuple[torch.nn.Module, object]:
    """The demo CLIP with random weights drawn from ``seed`` and its tokenizer."""
    import open_clip

    open_clip.add_model_config(CLIP_CONFIG)
    with seeded(seed):
        clip = open_clip.create_model(CLIP_NAME)
    return clip, open_clip.get_tokenizer(CLIP_NAME)


def new_dinov2(seed: int) -> torch.nn.Module:
    """The demo DINOv2 (``Dinov2Model``, eager attention) with random weights drawn from ``seed``."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(**json.loads(DINO_CONFIG.read_text()))
    config._attn_implementation = "eager"
    with seeded(seed):
        return Dinov2Model(config)


def _write_curves(curves: dict[str, Curve], out: Path) -> None:
    keys = sorted({k for c in curves.values() for r in c.rows for k in r} - {"step"})
    with (out / "curve.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["model", "step", *keys], lineterminator="\n")
        writer.writeheader()
        for name, curve in curves.items():
            writer.writerows({"model": name, **r} for r in curve.rows)
    from matplotlib.figure import Figure  # no pyplot: the backend stays the caller's

    fig = Figure(figsize=(4.2 * len(curves), 3))
    axes = fig.subplots(1, len(curves))
    for ax, (name, curve) in zip(axes, curves.items(), strict=True):
        for key in [k for k in curve.rows[0] if k != "step"]:
            ax.plot([r["step"] for r in curve.rows], [r[key] for r in curve.rows], label=key, lw=1)
        ax.set_title(f"demo {name}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=100, metadata={"Software": None})


def build(out: Path, recipe: BackboneRecipe) -> dict:
    """Train both backbones and write them to ``out``: its files are replaced only when everything
    succeeded, and only the files this command writes (a package's ``__init__.py`` stays)."""
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    data = PretrainSet.generate(recipe.seed, recipe.n_scenes)
    t_data = time.perf_counter() - t0
    clip, tokenizer = new_clip(recipe.seed)
    clip_curve = train_clip(clip, tokenizer, data, recipe.clip, recipe.seed)
    t_clip = time.perf_counter() - t0 - t_data
    dino = new_dinov2(recipe.seed + 1)
    dino_curve = train_dinov2(dino, clip, data, recipe.dinov2, recipe.seed + 1)
    t_dino = time.perf_counter() - t0 - t_data - t_clip
    held_out = PretrainSet.generate(recipe.seed + VALIDATION_OFFSET, recipe.n_validation)
    validation = zero_shot(clip, tokenizer, held_out)
    log.info("zero-shot on %d held-out scenes: %s", recipe.n_validation, validation)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in clip.state_dict().items()}
        # one metadata key: safetensors writes the metadata map in a random order, so two keys
        # would make the SHA-256 of identical weights differ from run to run
        save_file(state, tmp / CLIP_FILE, metadata={"format": "pt"})
        dino.save_pretrained(tmp, safe_serialization=True)
        _write_curves({"clip": clip_curve, "dinov2": dino_curve}, tmp)
        files = sorted(
            p.relative_to(tmp).as_posix()
            for p in tmp.rglob("*")
            if p.is_file() and p.suffix in (".safetensors", ".json")
        )
        provenance = {
            "what": "small backbones trained here on generated scenes; not the paper's models",
            "generator_version": GENERATOR_VERSION,
            "recipe": dataclasses.asdict(recipe),
            "configs": {
                "clip": json.loads(CLIP_CONFIG.read_text()),
                "dinov2": json.loads(DINO_CONFIG.read_text()),
            },
            "sha256": {f: file_sha256(tmp / f) for f in files},
            "final_loss": {"clip": clip_curve.rows[-1], "dinov2": dino_curve.rows[-1]},
            "validation": {"scenes": recipe.n_validation, "seed": recipe.seed + VALIDATION_OFFSET}
            | validation,
            "seconds": {
                "scenes": round(t_data, 1),
                "clip": round(t_clip, 1),
                "dinov2": round(t_dino, 1),
            },
            "threads": THREADS,
            "versions": {k: v for k, v in software_versions().items() if k in VERSION_KEYS},
        }
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=1) + "\n")
        (tmp / "README.md").write_text(readme(provenance))
        out.mkdir(exist_ok=True)
        for path in sorted(tmp.iterdir()):
            path.chmod(0o644)
            path.replace(out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("demo backbones written to %s in %.0f s", out, time.perf_counter() - t0)
    return provenance


VERSION_KEYS = (
    "python",
    "torch",
    "open_clip_torch",
    "transformers",
    "numpy",
    "scipy",
    "scikit-image",
)


def readme(prov: dict) -> str:
    """The weights folder's README, from its provenance."""
    r = prov["recipe"]
    hashes = "\n".join(f"| `{f}` | `{h}` |" for f, h in prov["sha256"].items())
    secs = prov["seconds"]
    v = prov["validation"]
    return f"""# Demo backbones: {prov["what"]}

Written by `make demo-backbones` (`python -m hxpe.backbones`, {prov["threads"]} CPU threads) in
{sum(secs.values()):.0f} s on the machine that made them (scenes {secs["scenes"]} s, CLIP
{secs["clip"]} s, DINOv2 {secs["dinov2"]} s). Do not edit: rerun the command.

- **Scenes:** {r["n_scenes"]} generated pictures (`hxpe/backbones/scenes.py`, generator
  `{prov["generator_version"]}`, seed {r["seed"]}) of the seven demo classes, 60 % with one of six
  defect kinds, each with a caption naming object, colour, state, defect kind, size and location.
  Their random streams are disjoint from the demo's aux and target images.
- **CLIP** (`hxpe/model/configs/hxpe-demo-clip.json`, random init from seed {r["seed"]}):
  {r["clip"]["steps"]} AdamW steps of {r["clip"]["batch_size"]} scenes, lr {r["clip"]["lr"]}; image-caption
  InfoNCE + patch-region alignment + the methods' prompt wording (weight
  {r["clip"].get("ensemble_weight", 0.0)}: each patch between a normal and an abnormal sentence drawn
  from `hxpe/model/prompts.yaml`) (`hxpe/backbones/clip_pretrain.py`; hard-negative captions
  {"on" if r["clip"].get("hard_negatives") else "off"}, image-level state loss weight {r["clip"].get("state_weight", 0.0)}).
- **DINOv2** (`hxpe/model/configs/hxpe-demo-dinov2.json`, random init from seed {r["seed"] + 1}):
  {r["dinov2"]["steps"]} AdamW steps of {r["dinov2"]["batch_size"]} scenes distilling the CLIP image
  tower's patch and CLS tokens (`hxpe/backbones/dino_distill.py`).
- **Final losses:** CLIP {prov["final_loss"]["clip"]}; DINOv2 {prov["final_loss"]["dinov2"]}.
  Curves: `curve.csv`, `curve.png`.
- **Zero-shot on {v["scenes"]} held-out pretraining scenes** (seed {v["seed"]}; prompts "a photo of a
  flawless/damaged <class>."): pixel AUROC {v["pixel_auroc"]}, image AUROC {v["image_auroc"]}
  (`hxpe/backbones/validate.py`; the demo's aux and target sets are never used here).
- **Check a regeneration:** `make demo-backbones CHECK=1` retrains into `build/demo-backbones/`
  and compares: SHA-256 equality of every file below, else final losses within
  {LOSS_RTOL:.0%} and zero-shot AUROCs within {AUROC_ATOL} (CPU kernels need not be
  bit-reproducible across machines and library builds).

| file | SHA-256 |
|---|---|
{hashes}

Software: {", ".join(f"{k} {v}" for k, v in prov["versions"].items())}.
"""


def compare(new: Path, old: Path) -> tuple[bool, list[str]]:
    """Whether the backbones in ``new`` reproduce those in ``old``, and the lines that say how."""
    a = json.loads((Path(new) / PROVENANCE).read_text())
    b = json.loads((Path(old) / PROVENANCE).read_text())
    differ = [f for f in b["sha256"] if a["sha256"].get(f) != b["sha256"][f]]
    if not differ:
        return True, [f"identical: SHA-256 of all {len(b['sha256'])} files equal"]
    lines = [f"not bit-identical: {', '.join(differ)}"]
    ok = True
    for model, row in b["final_loss"].items():
        for key, want in row.items():
            got = a["final_loss"][model][key]
            close = abs(got - want) <= LOSS_RTOL * abs(want) + 1e-4
            ok &= close
            lines.append(f"{model} final {key}: {got} vs {want} ({'ok' if close else 'DIFFERS'})")
    for key in ("pixel_auroc", "image_auroc"):
        got, want = a["validation"][key], b["validation"][key]
        close = abs(got - want) <= AUROC_ATOL
        ok &= close
        lines.append(f"zero-shot {key}: {got} vs {want} ({'ok' if close else 'DIFFERS'})")
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hxpe.backbones",
        description="Train the demo profile's small CLIP and DINOv2 on generated scenes (CPU, "
        "two threads) and write them with their provenance. The scenes come from other random "
        "streams than the demo's aux and target sets.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=BackboneRecipe.seed, help="pretraining seed")
    parser.add_argument("--scenes", type=int, default=BackboneRecipe.n_scenes)
    parser.add_argument("--clip-steps", type=int, default=ClipRecipe.steps)
    parser.add_argument("--dino-steps", type=int, default=DinoRecipe.steps)
    parser.add_argument(
        "--compare", type=Path, help="a committed weights folder to check the new one against"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    recipe = BackboneRecipe(
        seed=args.seed,
        n_scenes=args.scenes,
        clip=dataclasses.replace(ClipRecipe(), steps=args.clip_steps),
        dinov2=dataclasses.replace(DinoRecipe(), steps=args.dino_steps),
    )
    prov = build(args.out, recipe)
    print(json.dumps({"sha256": prov["sha256"], "seconds": prov["seconds"]}, indent=1))
    if args.compare is None:
        return 0
    ok, lines = compare(args.out, args.compare)
    print("\n".join(lines))
    return 0 if ok else 1
