"""Browse the stored results image by image: an ipywidgets explorer for JupyterLab, with a static
fallback (a small matplotlib panel of the first images) when nobody can interact, e.g. when papermill
executes the notebook.

Interactive or not: the ``interactive`` argument decides; when it is None, ``HXPE_INTERACTIVE=1/0``
decides, and otherwise the explorer is interactive only inside a Jupyter kernel started by a Jupyter
server (JupyterLab or Notebook set ``JPY_SESSION_NAME``; papermill and nbclient do not) with
ipywidgets installed.

Example (the shrunk demo profile after stage 05; static, as under papermill):
    >>> from hxpe.explorer import explore
    >>> fig = explore(cfg, interactive=False, n_static=2)
    >>> type(fig).__name__, len(fig.axes)  # 2 rows: image, ground truth, map, DINOv2, explanation
    ('Figure', 10)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from hxpe.config import Config
from hxpe.figures.artifacts import Artifacts, MissingArtifact, Sample
from hxpe.figures.panels import grid_figure, sample_row
from hxpe.figures.selection import qualitative_rows
from hxpe.figures.style import add_note, blank, value_range, wrap

log = logging.getLogger(__name__)


def detect_interactive() -> bool:
    """Whether a widget frontend is likely attached (see the module docstring)."""
    flag = os.environ.get("HXPE_INTERACTIVE")
    if flag is not None:
        return flag.strip().lower() in ("1", "true", "yes")
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel") or "JPY_SESSION_NAME" not in os.environ:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def sample_figure(sample: Sample, cfg: Config) -> Figure:
    """One image: image, ground truth, map, DINOv2 prompt, phrase, and the VLM description."""
    with_vfm = sample.vfm_prompt is not None
    ncols = 5 if with_vfm else 4
    fig = plt.figure(figsize=(2.4 * ncols, 3.6))
    grid = fig.add_gridspec(2, ncols, height_ratios=[3, 1])
    axes = [fig.add_subplot(grid[0, j]) for j in range(ncols)]
    vrange = value_range([sample.anomaly_map]) if sample.anomaly_map is not None else (0.0, 1.0)
    sample_row(axes, sample, vrange, with_vfm=with_vfm, titles=True)
    text_ax = fig.add_subplot(grid[1, :])
    blank(text_ax)
    description = sample.explanation.description or "(no VLM description stored)"
    text_ax.text(0, 1, "VLM description: " + wrap(description, 140, 4), va="top", fontsize=8)
    fig.suptitle(sample.image_id, fontsize=9)
    add_note(fig, cfg)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def static_panel(art: Artifacts, direction: str, variant: str, n: int = 4) -> Figure:
    """The first ``n`` images (anomalous first) of the first target dataset with stored maps."""
    for d, dataset in art.targets():
        if d == direction and art.has_maps(direction, variant, dataset):
            rows = qualitative_rows(art.scores(direction, variant, dataset), n)
            samples = [art.sample(direction, variant, dataset, i) for i in rows["image_id"]]
            fig = grid_figure(samples, f"{variant} on {dataset}, {direction} (static explorer)")
            add_note(fig, art.cfg)
            return fig
    raise MissingArtifact(
        f"no stored maps of variant {variant!r} for direction {direction!r}; run stage 05 first"
    )


def _image_options(art: Artifacts, direction: str, variant: str, dataset: str, cls: str) -> list:
    scores = art.scores(direction, variant, dataset)
    scores = scores[scores["cls"] == cls]
    return [
        (
            f"{r.defect_type}/{r.image_id.rsplit('/', 1)[-1]}  (score {r.image_score:.3f})",
            r.image_id,
        )
        for r in scores.itertuples(index=False)
    ]


def _choose(dropdown: Any, options: list, refresh: Any) -> None:
    """New options with the first one selected; ``refresh`` runs once either way."""
    dropdown.options = options
    first = (options[0][1] if isinstance(options[0], tuple) else options[0]) if options else None
    if dropdown.value != first:
        dropdown.value = first  # the observer refreshes
    else:
        refresh()


class Explorer:
    """The widget explorer: dataset, class, image and variant pickers above the image panel."""

    def __init__(self, art: Artifacts, direction: str, variant: str) -> None:
        import ipywidgets as w

        self.art, self.direction = art, direction
        datasets = [t for d, t in art.targets() if d == direction]
        self.variant = w.Dropdown(
            options=list(art.cfg.variants), value=variant, description="variant"
        )
        self.dataset = w.Dropdown(options=datasets, description="dataset")
        self.cls = w.Dropdown(description="class")
        self.image = w.Dropdown(description="image", layout=w.Layout(width="460px"))
        self.out = w.Output()
        self.widget = w.VBox(
            [w.HBox([self.variant, self.dataset]), w.HBox([self.cls, self.image]), self.out]
        )
        self.variant.observe(self._on_dataset, "value")
        self.dataset.observe(self._on_dataset, "value")
        self.cls.observe(self._on_class, "value")
        self.image.observe(self._render, "value")
        self._on_dataset()

    def _on_dataset(self, _: Any = None) -> None:
        try:
            scores = self.art.scores(self.direction, self.variant.value, self.dataset.value)
        except MissingArtifact as err:
            self._message(str(err))
            return
        _choose(self.cls, sorted(scores["cls"].unique()), self._on_class)

    def _on_class(self, _: Any = None) -> None:
        if self.cls.value is None:
            return
        args = (self.direction, self.variant.value, self.dataset.value, self.cls.value)
        _choose(self.image, _image_options(self.art, *args), self._render)

    def _message(self, text: str) -> None:
        self.out.clear_output()
        with self.out:
            print(text)

    def _render(self, _: Any = None) -> None:
        from IPython.display import display

        if self.image.value is None:
            return
        args = (self.direction, self.variant.value, self.dataset.value, self.image.value)
        fig = sample_figure(self.art.sample(*args), self.art.cfg)
        self.out.clear_output(wait=True)
        with self.out:
            display(fig)
        plt.close(fig)


def explore(
    cfg: Config,
    *,
    direction: str | None = None,
    variant: str | None = None,
    interactive: bool | None = None,
    n_static: int = 4,
    results_dir: Path | None = None,
) -> Any:
    """The interactive explorer (an ipywidgets box) or, when not interactive, a static Figure."""
    art = Artifacts(cfg, results_dir)
    direction = direction or art.directions()[0]
    variant = variant or cfg.main_variant
    if interactive is None:
        interactive = detect_interactive()
    if interactive:
        return Explorer(art, direction, variant).widget
    log.info("explorer: static output (no widget frontend); pass interactive=True in JupyterLab")
    fig = static_panel(art, direction, variant, n_static)
    plt.close(fig)
    return fig
