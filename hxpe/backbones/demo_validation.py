"""``python -m hxpe.backbones.demo_validation``: the demo's validation protocol, never its target.

The demo's settings (backbone recipe, image score, explainable mode, ...) are chosen here, on demo
sets drawn from other generator seeds (7 to 22 by default; the demo itself uses seed 0): for each
seed, stages 01-03 as the demo runs them (data, classical describer, rule extractor; cached per
seed), then the main variant trained on that seed's ``demo_aux`` as the demo trains it (stage 04)
and evaluated on that seed's ``demo_target`` (stage 05). It prints and writes the per-seed and mean
image AUROC, pixel AUROC and AUPRO (x100). The demo's own ``demo_target`` (seed 0) is never read.

Everything goes under ``--root`` (default ``build/demo-validation``): ``seed<N>/demo`` holds a seed's
data and agent caches, ``seed<N>/runs/<tag>`` one setting's checkpoints, maps and metrics, and
``<tag>.seeds-<seeds>.json`` the summary. ``--weights`` evaluates other backbones (a folder written by
``python -m hxpe.backbones --out DIR``); ``--set`` deep-merges a JSON object into the profile
(e.g. ``'{"model": {"score_mode": "text_max"}}'``).

Example::

    python -m hxpe.backbones.demo_validation --tag committed
    python -m hxpe.backbones.demo_validation --tag sigma2 --set '{"model": {"sigma": 2.0}}'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from hxpe.atomic import OutputKind, check_output_dir
from hxpe.config import Config, deep_merge, load_config
from hxpe.paths import RESULTS_ROOT_ENV, repo_root
from hxpe.results_layout import folder_name

log = logging.getLogger(__name__)

PARAMS = "notebooks/params/demo.yaml"
# What run_seed copies into every run folder: a folder holding all three is a previous run.
RUN_KIND = OutputKind("demo-validation run", ("agent", "data", "index"))
SEEDS = tuple(range(7, 23))  # 16 sets of 27 test images: one set alone spreads by 6 points
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro_anomalyclip")
TARGET = "demo_target"


def weights_overrides(weights: Path) -> dict[str, Any]:
    """Profile overrides that load the demo backbones from another folder."""
    weights = Path(weights).resolve()
    return {
        "model": {
            "clip": {"pretrained": str(weights / "open_clip_model.safetensors")},
            "vfm": {"weights_dir": str(weights)},
        }
    }


def seed_config(seed: int, overrides: dict[str, Any]) -> Config:
    """The demo profile with its generator at ``seed``, the test direction on ``demo_target``."""
    return load_config(
        repo_root() / PARAMS, deep_merge({"data": {"demo": {"seed": seed}}}, overrides)
    )


def prepare_seed(cfg: Config, variant: str) -> Path:
    """Stages 01-03 for the variant's reference rule, as the demo runs them (skipped when cached);
    returns the seed's results folder."""
    from hxpe.agent import run_describe, run_extract
    from hxpe.agent.backend_base import make_describer, make_extractor
    from hxpe.data import prepare_all
    from hxpe.data.index import load_index

    layout = cfg.layout
    rule = cfg.reference_rule_for(variant)
    descriptions, extractions = layout.agent_caches(rule)
    done = layout.root / ".validation-prepared"
    if done.is_file():
        return layout.root
    prepare_all(cfg)
    indexes = [load_index(layout.index_dir(src.name)) for src in cfg.data.datasets]
    run_describe(
        indexes,
        cfg.agent,
        descriptions,
        reference_rule=rule,
        describer=make_describer(cfg.agent.describe),
    )
    run_extract(
        descriptions,
        cfg.agent,
        extractions,
        clip=cfg.model.clip,
        extractor=make_extractor(cfg.agent.extract),
    )
    done.write_text("stages 01-03 done\n")
    return layout.root


def fresh_run_dir(root: Path, seed: int, tag: str) -> Path:
    """``root/seed<seed>/runs/<tag>``, empty: a previous run of the tag is replaced, anything else
    there is refused (``tag`` must be one folder name).

    Example:
        >>> run = fresh_run_dir(tmp_path, 7, "base")
        >>> run.relative_to(tmp_path).as_posix(), list(run.iterdir())
        ('seed7/runs/base', [])
        >>> fresh_run_dir(tmp_path, 7, "..")
        Traceback (most recent call last):
        ...
        ValueError: --tag '..' cannot name a folder under build/demo-validation: ...
    """
    run = root / f"seed{seed}" / "runs" / folder_name(tag, "--tag", "build/demo-validation")
    check_output_dir(run, RUN_KIND, option="--tag's run folder")
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    return run


def run_seed(seed: int, root: Path, tag: str, variant: str, overrides: dict[str, Any]) -> dict:
    """Train ``variant`` on the seed's demo_aux and evaluate it on its demo_target."""
    from hxpe.evaluation.protocol import run_protocol
    from hxpe.train import train_all

    os.environ[RESULTS_ROOT_ENV] = str(root / f"seed{seed}")
    cfg = seed_config(seed, overrides)
    prepared = prepare_seed(cfg, variant)
    run = fresh_run_dir(root, seed, tag)
    for sub in ("agent", "data", "index"):
        shutil.copytree(prepared / sub, run / sub, symlinks=True)
    t0 = time.perf_counter()
    train_all(cfg, results_dir=run, variants=[variant])
    per_class = run_protocol(cfg, variants=[variant], results_dir=run)
    rows = per_class[(per_class.dataset == TARGET) & per_class.metric.isin(METRICS)]
    means = rows.groupby("metric")["value"].mean()
    out = {m: round(100 * float(means[m]), 1) for m in METRICS}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("seed %d %s: %s", seed, tag, out)
    return out


def summarise(per_seed: dict[int, dict]) -> dict[str, float]:
    """The mean over seeds of each metric (x100, one decimal)."""
    frame = pd.DataFrame(per_seed).T
    return {m: round(float(frame[m].mean()), 1) for m in METRICS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hxpe.backbones.demo_validation",
        description="The demo's validation protocol: demo sets from other generator seeds (never "
        "the demo's target), stages 01-03 as the demo, the main variant trained on each seed's "
        "demo_aux and evaluated on its demo_target; per-seed and mean AUROCs and AUPRO (x100).",
    )
    parser.add_argument("--tag", required=True, help="name of this setting (a folder and a file)")
    parser.add_argument("--root", type=Path, default=repo_root() / "build" / "demo-validation")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--weights", type=Path, help="a backbones folder (default: the committed)")
    parser.add_argument("--variant", default=None, help="default: the profile's main variant")
    parser.add_argument("--set", default="{}", help="JSON object deep-merged into the profile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    overrides = json.loads(args.set)
    if args.weights is not None:
        overrides = deep_merge(weights_overrides(args.weights), overrides)
    variant = args.variant or load_config(repo_root() / PARAMS).main_variant
    root = args.root.resolve()
    per_seed = {s: run_seed(s, root, args.tag, variant, overrides) for s in args.seeds}
    result = {
        "tag": args.tag,
        "variant": variant,
        "weights": str(args.weights) if args.weights else "committed",
        "overrides": overrides,
        "seeds": per_seed,
        "mean": summarise(per_seed),
    }
    seeds = "-".join(map(str, args.seeds))
    (root / f"{args.tag}.seeds-{seeds}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"tag": args.tag, "mean": result["mean"], "seeds": per_seed}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
