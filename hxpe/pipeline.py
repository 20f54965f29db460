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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hxpe.backbones import DEMO_BACKBONES_LABEL
from hxpe.config import Config, load_config
from hxpe.paths import repo_root, resolve
from hxpe.provenance import record_stage, utc_now
from hxpe.results_layout import RULE_SUFFIX, ResultsLayout
from hxpe.seeding import seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    outputs: Callable[[ResultsLayout], tuple[Path, ...]]  # what the stage writes (manifest)

    @property
    def source(self) -> Path:
        return repo_root() / "notebooks" / self.notebook


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("data", "01_data_prep.ipynb", lambda r: (r.index_root, r.data_root)),
        # every reference rule's cache (``_noref`` too); record_stage keeps the ones that exist
        Stage(
            "describe",
            "02_vlm_descriptions.ipynb",
            lambda r: tuple(r.descriptions(rule) for rule in RULE_SUFFIX),
        ),
        Stage(
            "extract",
            "03_llm_extraction.ipynb",
            lambda r: tuple(r.extractions(rule) for rule in RULE_SUFFIX),
        ),
        Stage("train", "04_training.ipynb", lambda r: (r.checkpoints_root,)),
        Stage(
            "evaluate",
            "05_evaluation.ipynb",
            lambda r: (r.metrics_dir, r.tables_dir, r.maps_root),
        ),
        Stage("figures", "06_explainability_figures.ipynb", lambda r: (r.figures_dir,)),
    )
}


class OnceHandler(logging.Handler):
    """Shows each distinct warning once, as one line on ``stream`` (a notebook's cell output)."""

    def __init__(self, stream: object) -> None:
        super().__init__(logging.WARNING)
        self.stream = stream
        self.seen: set[tuple[str, str]] = set()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, record.getMessage())
        if key in self.seen:
            return
        self.seen.add(key)
        print(self.format(record), file=self.stream)  # type: ignore[call-overload]


def configure_logging(level: int = logging.INFO, *, notebook: bool = False) -> None:
    """One log format for notebooks and the command line (idempotent).

    ``hxpe`` logs at ``level``; other libraries (open_clip logs every model build at INFO on the root
    logger) only from WARNING. On the command line the records go to stdout. In a notebook
    (``notebook=True``) every record goes to the terminal that runs the kernel
    (:func:`hxpe.progress.terminal`), so saved notebooks carry no log walls; warnings (Python's
    ``warnings`` too) are shown in the notebook as well, each distinct one once.
    """
    from hxpe.progress import terminal

    root = logging.getLogger()
    if not any(getattr(h, "_hxpe", False) for h in root.handlers):
        handler = logging.StreamHandler(terminal() if notebook else sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._hxpe = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        if notebook:
            once = OnceHandler(sys.stdout)
            once._hxpe = True  # type: ignore[attr-defined]
            root.addHandler(once)
            logging.captureWarnings(True)
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("hxpe").setLevel(level)


# Stages whose engines (vLLM) fork worker processes that inherit torch's global flags: deterministic
# algorithms there only slow them down or break kernels; their outputs are keyed and cached instead.
NON_DETERMINISTIC_STAGES = ("describe", "extract")


def notebook_setup(params_file: str | Path, stage: str) -> Config:
    """Load the profile, seed everything, configure logging; print what the stage reads and writes.

    ``deterministic`` of the profile applies to every stage but the agent's (describe, extract).
    """
    configure_logging(notebook=True)
    cfg = load_config(params_file)
    seed_everything(cfg.seed, cfg.deterministic and stage not in NON_DETERMINISTIC_STAGES)
    out = cfg.results_dir
    log.info("profile %r (%s), stage %r, results in %s", cfg.profile, params_file, stage, out)
    if cfg.profile == "demo":
        log.info("DEMO profile: %s.", DEMO_BACKBONES_LABEL)
    return cfg


def execute_notebook_atomic(
    source: Path,
    target: Path,
    parameters: dict,
    *,
    kernel: str = "hxpe",
    log_output: bool = True,
) -> Path:
    """Execute ``source`` with papermill into a hidden temporary file beside ``target``; rename it to
    ``target`` only when every cell succeeded. On failure the partial notebook is kept as
    ``<target stem>.failed.ipynb`` for inspection and ``target`` is left untouched (absent or old).
    """
    import papermill

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.running.ipynb")
    failed = target.with_name(f"{target.stem}.failed.ipynb")
    try:
        papermill.execute_notebook(
            str(source),
            str(tmp),
            parameters=parameters,
            kernel_name=kernel,
            cwd=str(repo_root()),
            log_output=log_output,
            progress_bar=False,
        )
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
            log.error("%s failed; the partly executed notebook is %s", source.name, failed)
        raise
    os.replace(tmp, target)
    failed.unlink(missing_ok=True)
    return target


def run_stage(
    stage: str, params_file: str | Path, *, kernel: str = "hxpe", log_output: bool = True
) -> Path:
    """Execute one stage's notebook with papermill, atomically; record it in the manifest."""
    if stage not in STAGES:
        raise KeyError(f"Unknown stage {stage!r}; stages are {list(STAGES)}")
    spec = STAGES[stage]
    params_path = resolve(params_file)
    cfg = load_config(params_path)
    layout = cfg.layout
    target = layout.notebook(spec.notebook)
    started = utc_now()
    log.info("stage %s: executing %s -> %s", stage, spec.source, target)
    execute_notebook_atomic(
        spec.source,
        target,
        {"params_file": os.path.relpath(params_path, repo_root())},
        kernel=kernel,
        log_output=log_output,
    )
    record_stage(
        layout.root,
        stage,
        params_file=params_path,
        started=started,
        finished=utc_now(),
        outputs=[*spec.outputs(layout), target],
    )
    return target
