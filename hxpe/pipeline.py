"""The six stages and how each runs: a notebook executed by papermill, atomically, with provenance.

``run_stage`` executes ``notebooks/0N_*.ipynb`` with the profile's params file into a temporary
notebook next to the target and renames it to ``results/<profile>/0N_*.ipynb`` only when every cell
succeeded, so an interrupted or failed stage never leaves a file that ``make`` would take as up to
date. It then records the stage in ``provenance.json``.

Inside a notebook, ``notebook_setup`` is the first call: it loads and validates the config, seeds
everything, configures logging and says where the stage writes.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hxpe.config import Config, load_config
from hxpe.paths import repo_root, resolve
from hxpe.provenance import record_stage, utc_now
from hxpe.seeding import seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    outputs: tuple[str, ...]  # paths relative to results/<profile>/ that the stage writes

    @property
    def source(self) -> Path:
        return repo_root() / "notebooks" / self.notebook


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("data", "01_data_prep.ipynb", ("index", "data")),
        Stage("describe", "02_vlm_descriptions.ipynb", ("agent/descriptions.jsonl",)),
        Stage("extract", "03_llm_extraction.ipynb", ("agent/extractions.jsonl",)),
        Stage("train", "04_training.ipynb", ("checkpoints",)),
        Stage("evaluate", "05_evaluation.ipynb", ("metrics", "tables", "maps")),
        Stage("figures", "06_explainability_figures.ipynb", ("figures",)),
    )
}


def configure_logging(level: int = logging.INFO) -> None:
    """One log format for notebooks and the command line (idempotent)."""
    root = logging.getLogger()
    if not any(getattr(h, "_hxpe", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._hxpe = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def notebook_setup(params_file: str | Path, stage: str) -> Config:
    """Load the profile, seed everything, configure logging; print what the stage reads and writes."""
    configure_logging()
    cfg = load_config(params_file)
    seed_everything(cfg.seed, cfg.deterministic)
    out = cfg.results_dir
    log.info("profile %r (%s), stage %r, results in %s", cfg.profile, params_file, stage, out)
    if cfg.profile == "demo":
        log.info("DEMO profile: tiny random-init models on generated data; numbers are not the paper's.")
    return cfg


def run_stage(
    stage: str, params_file: str | Path, *, kernel: str = "hxpe", log_output: bool = True
) -> Path:
    """Execute one stage's notebook with papermill, atomically; return the executed notebook path."""
    import papermill

    if stage not in STAGES:
        raise KeyError(f"Unknown stage {stage!r}; stages are {list(STAGES)}")
    spec = STAGES[stage]
    params_path = resolve(params_file)
    cfg = load_config(params_path)
    out_dir = cfg.results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / spec.notebook
    tmp = target.with_name(f".{target.stem}.running.ipynb")
    started = utc_now()
    log.info("stage %s: executing %s -> %s", stage, spec.source, target)
    try:
        papermill.execute_notebook(
            str(spec.source),
            str(tmp),
            parameters={"params_file": os.path.relpath(params_path, repo_root())},
            kernel_name=kernel,
            cwd=str(repo_root()),
            log_output=log_output,
            progress_bar=False,
        )
    except BaseException:
        failed = tmp.with_name(f"{target.stem}.failed.ipynb")
        if tmp.exists():
            os.replace(tmp, failed)
            log.error("stage %s failed; the partly executed notebook is %s", stage, failed)
        raise
    os.replace(tmp, target)
    stale = target.with_name(f"{target.stem}.failed.ipynb")
    stale.unlink(missing_ok=True)
    record_stage(
        out_dir,
        stage,
        params_file=params_path,
        started=started,
        finished=utc_now(),
        outputs=[out_dir / o for o in spec.outputs] + [target],
    )
    return target
