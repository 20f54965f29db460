"""Every path under ``results/<profile>/``: the one owner of the directory contract.

``hxpe/ARCHITECTURE.md`` (Directory contract) lists what each stage writes where; this class is that
table in code. Stages, commands and notebooks ask it for paths instead of joining strings, so a
folder can move in one place. Names that become folders (profile, dataset, direction, variant,
notebook) must be single, safe path components, so every returned path lies under the profile's
root. The files *inside* an artifact folder are its writer's: ``save_index`` (``index.csv``,
``meta.json``, ``dataset.json``), ``save_checkpoint`` and the trainer (``hxpe.model.checkpoint``),
``MapStore`` (``hxpe.evaluation.maps``).

Example:
    >>> layout = ResultsLayout("demo", results_root="results")
    >>> layout.checkpoint_dir("aux_to_target", "hxpe").as_posix()
    'results/demo/checkpoints/aux_to_target/hxpe'
    >>> layout.relative(layout.descriptions("none"))
    'agent/descriptions_noref.jsonl'
    >>> layout.index_dir("../visa")
    Traceback (most recent call last):
    ...
    ValueError: dataset name '../visa' cannot name a folder under results/demo: ...
"""

from __future__ import annotations

from pathlib import Path

from hxpe import paths

MANIFEST = "provenance.json"
# Agent caches, one pair per reference rule (LEDGER.md §4 r1): the default rule (a normal
# reference per class) has no suffix; the no-reference rule (``none``) uses ``_noref``.
RULE_SUFFIX = {"first_normal_train": "", "none": "_noref"}
METRIC_FILES = ("per_class.csv", "per_dataset.csv", "skipped.csv")


# Beside the profiles, two per-checkout outputs (not moved by ``HXPE_RESULTS_ROOT``):


def bench_dir() -> Path:
    """``<repo>/results/bench``: per-machine benchmark and GPU-check reports (``make bench``,
    ``make gpu-smoke``)."""
    return paths.repo_root() / "results" / "bench"


def models_lock() -> Path:
    """``<repo>/results/models.lock.json``: the revisions ``make fetch-models`` resolved."""
    return paths.repo_root() / "results" / "models.lock.json"


def folder_name(value: str, what: str, where: str = "results") -> str:
    """``value`` when it can name one folder: not empty, not ``.``/``..``, no separator or NUL.

    >>> folder_name("aux_to_target", "direction")
    'aux_to_target'
    """
    bad = (
        not value
        or value in (".", "..")
        or any(c in value for c in "/\\\0")
        or value != value.strip()
    )
    if bad:
        raise ValueError(
            f"{what} {value!r} cannot name a folder under {where}: it must be one path component "
            f"(not empty, not '.' or '..', no '/' or '\\', no surrounding spaces). Rename the {what} "
            f"(params file or command line)."
        )
    return value


class ResultsLayout:
    """The paths of one profile's results directory (``results_root / profile``)."""

    def __init__(self, profile: str, results_root: str | Path | None = None) -> None:
        self.profile = folder_name(profile, "profile", "the results root")
        self.results_root = Path(results_root) if results_root is not None else paths.results_root()
        self.root = self.results_root / self.profile

    @classmethod
    def at(cls, directory: str | Path) -> ResultsLayout:
        """The layout of an existing profile directory (its name is the profile)."""
        directory = Path(directory)
        return cls(directory.name, directory.parent)

    def __repr__(self) -> str:
        return f"ResultsLayout({self.profile!r}, results_root={str(self.results_root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResultsLayout) and self.root == other.root

    def __hash__(self) -> int:
        return hash(self.root)

    def _under(self, *parts: str, what: tuple[str, ...] = ()) -> Path:
        """``root / parts``; the last ``len(what)`` parts are names checked by :func:`folder_name`."""
        names = parts[len(parts) - len(what) :]
        for value, kind in zip(names, what, strict=True):
            folder_name(value, kind, str(self.root))
        return self.root.joinpath(*parts)

    def relative(self, path: Path) -> str:
        """``path`` relative to the profile root, as POSIX text (``''`` for the root itself)."""
        rel = Path(path).relative_to(self.root).as_posix()
        return "" if rel == "." else rel

    # stage 01 ---------------------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        return self.root / "data"

    def data_dir(self, dataset: str) -> Path:
        """``data/<dataset>``: a generated demo dataset (MVTec layout)."""
        return self._under("data", dataset, what=("dataset name",))

    @property
    def index_root(self) -> Path:
        return self.root / "index"

    def index_dir(self, dataset: str) -> Path:
        """``index/<dataset>``: the index (``save_index``) and, for KSDD/DAGM, ``prepared/``."""
        return self._under("index", dataset, what=("dataset name",))

    def dataset_info(self, dataset: str) -> Path:
        """``index/<dataset>/dataset.json``."""
        return self.index_dir(dataset) / "dataset.json"

    def dataset_infos(self) -> list[Path]:
        """Every ``index/*/dataset.json``, sorted."""
        return sorted(self.index_root.glob("*/dataset.json"))

    # stages 02-03 -----------------------------------------------------------------------------
    @property
    def agent_dir(self) -> Path:
        return self.root / "agent"

    def agent_caches(self, rule: str = "first_normal_train") -> tuple[Path, Path]:
        """``(descriptions, extractions)`` caches of a reference rule."""
        if rule not in RULE_SUFFIX:
            raise ValueError(f"unknown reference rule {rule!r}; use one of {sorted(RULE_SUFFIX)}")
        suffix = RULE_SUFFIX[rule]
        return (
            self.agent_dir / f"descriptions{suffix}.jsonl",
            self.agent_dir / f"extractions{suffix}.jsonl",
        )

    def descriptions(self, rule: str = "first_normal_train") -> Path:
        """``agent/descriptions[_noref].jsonl`` (stage 02)."""
        return self.agent_caches(rule)[0]

    def extractions(self, rule: str = "first_normal_train") -> Path:
        """``agent/extractions[_noref].jsonl`` (stage 03)."""
        return self.agent_caches(rule)[1]

    # stage 04 ---------------------------------------------------------------------------------
    @property
    def checkpoints_root(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint_dir(self, direction: str, variant: str) -> Path:
        """``checkpoints/<direction>/<variant>``."""
        return self._under("checkpoints", direction, variant, what=("direction", "variant"))

    def checkpoint_dirs(self) -> list[Path]:
        """Every existing ``checkpoints/<direction>/<variant>`` folder, sorted."""
        return sorted(p for p in self.checkpoints_root.glob("*/*") if p.is_dir())

    # stage 05 ---------------------------------------------------------------------------------
    @property
    def maps_root(self) -> Path:
        return self.root / "maps"

    def maps_dir(self, direction: str, variant: str, dataset: str) -> Path:
        """``maps/<direction>/<variant>/<dataset>``: one :class:`~hxpe.evaluation.maps.MapStore`."""
        return self._under(
            "maps", direction, variant, dataset, what=("direction", "variant", "dataset name")
        )

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def metrics_file(self, name: str) -> Path:
        """``metrics/<name>`` for a name of :data:`METRIC_FILES`."""
        if name not in METRIC_FILES:
            raise ValueError(f"unknown metrics file {name!r}; stage 05 writes {METRIC_FILES}")
        return self.metrics_dir / name

    @property
    def metrics_parts_dir(self) -> Path:
        return self.metrics_dir / "parts"

    def metrics_part_dir(self, direction: str, variant: str, dataset: str) -> Path:
        """``metrics/parts/<direction>/<variant>/<dataset>`` (one protocol unit's metrics)."""
        return self._under(
            "metrics",
            "parts",
            direction,
            variant,
            dataset,
            what=("direction", "variant", "dataset name"),
        )

    def metrics_parts(self, name: str) -> list[Path]:
        """Every unit's ``metrics/parts/*/*/*/<name>``, sorted."""
        self.metrics_file(name)
        return sorted(self.metrics_parts_dir.glob(f"*/*/*/{name}"))

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    # stage 06 ---------------------------------------------------------------------------------
    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    # every stage ------------------------------------------------------------------------------
    def notebook(self, name: str) -> Path:
        """``<name>``: an executed stage notebook (``0N_*.ipynb``)."""
        if not name.endswith(".ipynb"):
            raise ValueError(f"notebook {name!r} must be an .ipynb file name")
        return self._under(name, what=("notebook",))

    @property
    def manifest(self) -> Path:
        """``provenance.json``: the run manifest."""
        return self.root / MANIFEST
