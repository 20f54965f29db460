"""``make reproduce-dryrun``: the paper path end to end on CPU, without weights or datasets.

``python -m hxpe.dryrun --out build/dryrun`` writes what the ``dryrun`` profile
(``notebooks/params/dryrun.yaml``) reads: a small tree in each of the seven benchmarks' *raw* layouts
(``hxpe.data.fixtures``) and two tiny random-init Qwen models for the agent's ``transformers`` backend
(a Qwen2-VL with its real processor and chat template, and a Qwen2 causal LM). The profile then runs
every stage with the paper's configuration: the real-size CLIP ViT-L/14@336 at 518 px and DINOv2
ViT-S/14, built with RANDOM weights (logged loudly), the cross-dataset directions, the vLLM-free agent.
It proves that ``make reproduce`` would run given weights and data; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hxpe.agent.tiny_models import save_tiny_qwen2, save_tiny_qwen2_vl
from hxpe.data.fixtures import write_all_fixtures
from hxpe.paths import resolve

log = logging.getLogger(__name__)


def setup(out: Path, *, image_size: int = 128, n_classes: int = 1) -> dict[str, Path]:
    """Write the raw fixture trees under ``out/raw`` and the tiny agent models under ``out/models``.

    One class per dataset by default (the first of its official list; KSDD has one anyway), with one
    normal and one anomalous test image: the real-size models cost ~15-25 s per image on 2 CPU
    cores, so this keeps the whole dry run near a quarter of an hour.
    """
    out.mkdir(parents=True, exist_ok=True)
    roots = write_all_fixtures(out / "raw", image_size=image_size, n_classes=n_classes)
    models = {
        # Every 3rd token id also ends generation, so random outputs stay short and reach stage 03.
        "vlm": save_tiny_qwen2_vl(out / "models" / "tiny-qwen2-vl", stop_every=3),
        "llm": save_tiny_qwen2(out / "models" / "tiny-qwen2", stop_every=3),
    }
    log.warning(
        "Dry-run inputs in %s: fixture trees for %s and tiny RANDOM Qwen models; nothing here is "
        "real data or real weights.",
        out,
        sorted(roots),
    )
    return {**roots, **models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hxpe.dryrun",
        description="Write the inputs of the paper-path dry run (fixture datasets in their raw "
        "layouts, tiny random Qwen models); then `make all PROFILE=dryrun` runs every stage.",
    )
    parser.add_argument(
        "--out", default="build/dryrun", help="Output folder (default build/dryrun)."
    )
    parser.add_argument("--image-size", type=int, default=128, help="Fixture image size in pixels.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    setup(resolve(args.out), image_size=args.image_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
