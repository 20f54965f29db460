"""``make app`` / ``hxpe app``: a local web page to score and explain one image of your own.

A thin Gradio UI over :mod:`hxpe.predict`: upload a test image (and, optionally, a defect-free
reference of the same part), pick a checkpoint and an agent backend, and the page shows the anomaly
overlay, the DINOv2 prompt map, the description, the explainable phrase, the verdict, the image score
and the word-importance bars, with the JSON record of ``hxpe predict`` to download. Uploads are read
by the project's one image reader (:mod:`hxpe.data.images`), exactly as evaluation reads its images.

The server binds to 127.0.0.1 unless told otherwise (``--host``) and stays offline
(``HF_HUB_OFFLINE=1`` unless you set it). Gradio is imported only when the page is built, so this
module's logic (:func:`analyse`) works without it. Every error is shown as the one line the CLI prints
(:func:`hxpe.errors.user_message`). Each request writes into its own folder under one temporary
``hxpe-app-*`` root (:class:`OutputFolders`): only the last few are kept, and the root is removed
when the server stops. At most :data:`hxpe.predict.MODEL_CACHE_SIZE` checkpoints stay loaded.

Example (a tiny random-init checkpoint; no agent and no description, so the generic prompts):
    >>> page = analyse(part_png, checkpoint=checkpoint, out_dir=tmp_path)
    >>> page.status
    'Done in ... s with `.../checkpoints/aux_to_target/hxpe`. Note: random-init CLIP (tiny test model)...'
    >>> page.phrase, page.verdict
    ('(none: the model uses its generic prompts)', 'no verdict (no description)')
    >>> page.overlay.name, page.prompt.name, page.record.name
    ('part_overlay.png', 'part_dinov2_prompt.png', 'part_prediction.json')
    >>> analyse(part_png, checkpoint=tmp_path, out_dir=tmp_path).status
    '**Checkpoint not usable:** ... is not a checkpoint directory (no config.json); ...'
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hxpe import predict as prediction
from hxpe.config import Config, load_config
from hxpe.data.images import ImageReadError, ImageTooLargeError
from hxpe.errors import user_message
from hxpe.predict import DEFAULT_PARAMS, MAX_PIXELS
from hxpe.results_layout import ResultsLayout

log = logging.getLogger(__name__)

KEEP_REQUESTS = 4  # request folders kept on disk (the page's files are copied by Gradio)
MAX_FILE_SIZE = "50mb"  # Gradio refuses larger uploads before they reach us
NO_AGENT = "none (generic prompts or your description)"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


# --------------------------------------------------------------------------------------------------
# Choices offered by the page
# --------------------------------------------------------------------------------------------------


def default_checkpoint(cfg: Config) -> Path:
    """The profile's main variant for its first direction (the demo's: ``results/demo/...``)."""
    return cfg.layout.checkpoint_dir(cfg.evaluation.directions[0].name, cfg.main_variant)


def found_checkpoints(results_root: Path) -> list[str]:
    """Checkpoint directories of every profile under ``results_root``
    (``<profile>/checkpoints/<direction>/<variant>`` holding weights and config)."""
    from hxpe.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    if not results_root.is_dir():
        return []
    profiles = sorted(p for p in results_root.iterdir() if p.is_dir())
    found = [d for p in profiles for d in ResultsLayout.at(p).checkpoint_dirs()]
    return sorted(
        str(d) for d in found if (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file()
    )


def _vlm_is_local(model_id: str) -> bool:
    from hxpe.weights import local_snapshot, spec_for_repo

    if Path(model_id).expanduser().is_dir():
        return True
    spec = spec_for_repo(model_id)
    return spec is not None and local_snapshot(spec) is not None


def available_backends(cfg: Config) -> list[str]:
    """Describer backends this machine can run for the profile: ``classical`` always (CPU);
    ``transformers`` when the profile's VLM weights are local; ``vllm`` when vLLM imports and a
    GPU is visible (and the weights are local)."""
    backends = ["classical"]
    model_id = cfg.agent.describe.model_id
    if cfg.agent.describe.backend in ("transformers", "vllm") and _vlm_is_local(model_id):
        backends.append("transformers")
        if importlib.util.find_spec("vllm") is not None:
            import torch

            if torch.cuda.is_available():
                backends.append("vllm")
    return backends


# --------------------------------------------------------------------------------------------------
# One request
# --------------------------------------------------------------------------------------------------


def _error_page(title: str, err: Exception) -> Page:
    """The page of a failure: the CLI's one-line message (:func:`hxpe.errors.user_message`);
    anything without one is a bug and is raised."""
    message = user_message(err, "hxpe app")
    if message is None:
        raise err
    return Page.error(title, message)


@dataclass
class Page:
    """What one click shows: a status line, or the prediction's pictures, texts and record."""

    status: str
    overlay: Path | None = None
    prompt: Path | None = None
    words: Path | None = None
    description: str = ""
    phrase: str = ""
    verdict: str = ""
    score: str = ""
    record: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def error(cls, title: str, err: BaseException | str) -> Page:
        return cls(status=f"**{title}:** {err}")


class OutputFolders:
    """One folder per request under a private ``hxpe-app-*`` temporary root: the ``keep`` newest
    are kept, older ones are removed, and the root goes when :meth:`close` is called or the process
    exits."""

    def __init__(self, keep: int = KEEP_REQUESTS, parent: str | Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hxpe-app-", dir=parent))
        self.keep = keep
        self._made: deque[Path] = deque()
        self._count = 0
        self._lock = threading.Lock()
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)

    def new(self) -> Path:
        """A fresh, empty folder for one request (removing the oldest beyond ``keep``)."""
        with self._lock:
            self._count += 1
            folder = self.root / f"request-{self._count:06d}"
            folder.mkdir()
            self._made.append(folder)
            while len(self._made) > self.keep:
                shutil.rmtree(self._made.popleft(), ignore_errors=True)
        return folder

    def close(self) -> None:
        """Remove the root and every request folder in it."""
        self._cleanup()


def _verdict_text(verdict: bool | None) -> str:
    return {True: "anomalous", False: "normal", None: "no verdict (no description)"}[verdict]


def analyse(
    image: str | Path | None,
    reference: str | Path | None = None,
    *,
    checkpoint: str | Path | None = None,
    agent: str | None = None,
    description: str | None = None,
    class_name: str = "object",
    params: str | Path = DEFAULT_PARAMS,
    max_pixels: int = MAX_PIXELS,
    out_dir: str | Path,
) -> Page:
    """Score and explain ``image`` with :func:`hxpe.predict.predict`, writing the pictures and the
    record into ``out_dir``; errors become a status line (the CLI's message)."""
    if not image:
        return Page.error("No image", "upload a test image first.")
    started = time.perf_counter()
    try:
        cfg = load_config(params)
        ckpt = Path(checkpoint).expanduser() if checkpoint else default_checkpoint(cfg)
        model, source = prediction.load_model(cfg, ckpt)
    except Exception as err:  # noqa: BLE001 - every known failure becomes the page's status
        return _error_page("Checkpoint not usable", err)
    agent = None if agent in (None, "", NO_AGENT) else agent
    text = (description or "").strip() or None
    if agent is not None and text is not None:
        return Page.error(
            "Two explanations", "choose an agent backend or type a description, not both."
        )
    try:
        pred = prediction.predict(
            image,
            reference=reference or None,
            checkpoint=source,
            agent=agent,
            description=text,
            params=params,
            class_name=class_name.strip() or "object",
            model=model,
            words=True,
            max_pixels=max_pixels,
        )
        files = pred.save(Path(out_dir))
    except ImageTooLargeError as err:
        return Page.error("Image too large", err)
    except prediction.ImageTooSmallError as err:
        return Page.error("Image too small", err)
    except ImageReadError as err:
        return Page.error("Not an image", err)
    except Exception as err:  # noqa: BLE001 - every known failure becomes the page's status
        return _error_page("Cannot explain this image", err)
    seconds = time.perf_counter() - started
    note = pred.provenance.get("note")
    status = f"Done in {seconds:.1f} s with `{source}`." + (f" Note: {note}." if note else "")
    return Page(
        status=status,
        overlay=files["overlay"],
        prompt=files.get("dinov2_prompt"),
        words=files.get("words"),
        description=pred.description or "",
        phrase=pred.phrase or "(none: the model uses its generic prompts)",
        verdict=_verdict_text(pred.verdict),
        score=f"{pred.image_score:.4f}",
        record=files["json"],
        files=files,
    )


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------


def image_extensions() -> list[str]:
    """File extensions Pillow can open (the upload boxes accept these)."""
    from PIL import Image

    return sorted({ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN})


def build_app(
    params: str | Path = DEFAULT_PARAMS,
    max_pixels: int = MAX_PIXELS,
    folders: OutputFolders | None = None,
) -> Any:
    """The Gradio Blocks of the page (not launched), writing each request into ``folders.new()``
    (default: fresh :class:`OutputFolders`). Gradio's usage analytics are off unless
    ``GRADIO_ANALYTICS_ENABLED`` says otherwise, and the model hub is not contacted unless
    ``HF_HUB_OFFLINE`` says otherwise: the page is local and calls no one."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gradio as gr

    cfg = load_config(params)
    default = str(default_checkpoint(cfg))
    choices = sorted({default, *found_checkpoints(cfg.layout.results_root)})
    backends = [NO_AGENT, *available_backends(cfg)]
    extensions = image_extensions()
    folders = folders or OutputFolders()

    with gr.Blocks(title="HXPE: score and explain your image") as app:
        gr.Markdown(
            "## HXPE: score and explain one image\n"
            "Upload a test image and, for the DINOv2 prompt and the classical describer, a "
            f"defect-free reference of the same part. Images up to {max_pixels / 1e6:g} megapixels "
            f"and {MAX_FILE_SIZE}."
        )
        with gr.Row():
            image = gr.File(label="Test image", file_types=extensions, elem_id="image")
            reference = gr.File(
                label="Normal reference (optional)", file_types=extensions, elem_id="reference"
            )
        with gr.Row():
            checkpoint = gr.Dropdown(
                choices=choices,
                value=default,
                allow_custom_value=True,
                label="Checkpoint directory",
                elem_id="checkpoint",
            )
            agent = gr.Dropdown(
                choices=backends, value=backends[-1], label="Agent backend", elem_id="agent"
            )
            class_name = gr.Textbox(value="object", label="Part name", elem_id="class_name")
        description = gr.Textbox(
            label="Or your own description (with agent 'none')", lines=2, elem_id="description"
        )
        run = gr.Button("Score and explain", variant="primary", elem_id="run")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            overlay = gr.Image(label="Anomaly map", type="filepath", elem_id="overlay")
            prompt = gr.Image(label="DINOv2 prompt", type="filepath", elem_id="prompt")
        with gr.Row():
            score = gr.Textbox(label="Image score", elem_id="score")
            verdict = gr.Textbox(label="Verdict", elem_id="verdict")
            phrase = gr.Textbox(label="Explainable phrase", elem_id="phrase")
        described = gr.Textbox(label="Description", lines=3, elem_id="described")
        words = gr.Image(label="Word importance", type="filepath", elem_id="words")
        record = gr.File(label="JSON record", elem_id="record")

        def _on_click(img, ref, ckpt, backend, text, name):  # type: ignore[no-untyped-def]
            page = analyse(
                img,
                ref,
                checkpoint=ckpt,
                agent=backend,
                description=text,
                class_name=name,
                params=params,
                max_pixels=max_pixels,
                out_dir=folders.new(),
            )
            return (
                page.status,
                page.overlay and str(page.overlay),
                page.prompt and str(page.prompt),
                page.score,
                page.verdict,
                page.phrase,
                page.description,
                page.words and str(page.words),
                page.record and str(page.record),
            )

        run.click(
            _on_click,
            inputs=[image, reference, checkpoint, agent, description, class_name],
            outputs=[status, overlay, prompt, score, verdict, phrase, described, words, record],
        )
    return app


def serve(
    params: str | Path = DEFAULT_PARAMS,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_pixels: int = MAX_PIXELS,
) -> None:
    """Build the page and serve it until interrupted (Ctrl-C or SIGTERM); its request folders are
    removed when it stops."""
    started = time.perf_counter()
    folders = OutputFolders()
    try:
        app = build_app(params, max_pixels, folders)
        log.info(
            "app built in %.1f s; serving on http://%s:%d",
            time.perf_counter() - started,
            host,
            port,
        )
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            app.queue().launch(
                server_name=host,
                server_port=port,
                max_file_size=MAX_FILE_SIZE,
                show_error=True,
                inbrowser=False,
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        folders.close()


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM ends the server like Ctrl-C, so that its ``finally`` clauses run."""
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_app(args: argparse.Namespace) -> int:
    serve(args.params, args.host, args.port, args.max_pixels)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hxpe app`` to the ``hxpe`` command."""
    p = subparsers.add_parser(
        "app",
        help="A local web page to score and explain your own images (needs the app extra).",
        description="Serve a Gradio page over `hxpe predict`: upload an image and an optional "
        "normal reference, pick a checkpoint and an agent backend, and see the anomaly map, the "
        "DINOv2 prompt, the description, the phrase, the verdict, the image score and the word "
        "importance; download the JSON record. Install Gradio with: pip install -c constraints.txt "
        "-e '.[app]' (make app does it).",
    )
    p.add_argument(
        "--params",
        default=DEFAULT_PARAMS,
        metavar="FILE",
        help=f"Profile YAML: agent settings and default checkpoint (default {DEFAULT_PARAMS}).",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"Address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 exposes it).",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Port (default {DEFAULT_PORT}).")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        metavar="N",
        help=f"Refuse larger images (default {MAX_PIXELS:,} pixels).",
    )
    p.set_defaults(func=_cmd_app)


def main(argv: list[str] | None = None) -> int:
    from hxpe.cli import main as cli_main

    return cli_main(["app", *(argv or [])])


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
