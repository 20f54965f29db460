"""One example through each stage's method: the pictures and tables of the notebooks' walk-throughs.

Every notebook first follows ONE image through its stage (this module), then runs the stage at scale.
The functions only read stored artifacts, call the package's own public functions (the template's
``render``, ``TextBank.sentences``/``tokens``, ``hxpe_loss``, ``roc_curve``/``pro_curve``) or
plot the intermediates a model pass returns (``model(..., trace=True)``), so the walk-through shows
what the pipeline computes; no model arithmetic is repeated here (:mod:`hxpe.equations` recomputes
the equations, to check them).

Example:
    >>> fig = protocol_figure([("aux_to_target", "demo_aux", ["demo_target"])])
    >>> [t.get_text() for t in fig.axes[0].texts if t.get_text()]
    ['train on\\ndemo_aux', 'aux_to_target', 'test on demo_target']
    >>> plt.close(fig)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from hxpe.agent.schema import verdict, vlm_says_no_anomaly
from hxpe.agent.templates import load_template
from hxpe.data.index import DatasetIndex, select_references
from hxpe.data.torch_dataset import load_image, load_mask
from hxpe.figures.style import MAP_CMAP, VFM_CMAP

# ------------------------------------------------------------------------------------ stage 01


def example_row(index: DatasetIndex) -> pd.Series:
    """The dataset's first anomalous test image with a mask (by ``image_id``), else its first row."""
    frame = index.frame.sort_values("image_id")
    hits = frame[(frame["split"] == "test") & (frame["label"] == 1) & (frame["mask"] != "")]
    return (hits if len(hits) else frame).iloc[0]


def image_mask_figure(index: DatasetIndex, row: pd.Series, size: int = 256) -> Figure:
    """The image, its ground-truth mask, and the mask outlined on the image."""
    image = load_image(index.abs_path(row["image"]), size).permute(1, 2, 0).numpy()
    mask_path = index.abs_path(row["mask"]) if row["mask"] else None
    mask = load_mask(mask_path, size)[0].numpy()
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(mask, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ground-truth mask")
    axes[2].imshow(image)
    if mask.any():
        axes[2].contour(mask, levels=[0.5], colors="red", linewidths=1.2)
    axes[2].set_title("mask outlined")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(
        f"{row['image_id']}  (label {int(row['label'])}, {row['defect_type']})", fontsize=9
    )
    fig.tight_layout()
    return fig


def protocol_figure(directions: Sequence[tuple[str, str, Sequence[str]]]) -> Figure:
    """The cross-dataset protocol: per direction, the auxiliary (training) dataset on the left and
    an arrow to each unseen target dataset on the right.

    ``directions``: ``(name, train_dataset, test_datasets)`` per direction.
    """
    rows = sum(max(1, len(tests)) for _, _, tests in directions) + len(directions) - 1
    fig, ax = plt.subplots(figsize=(7, 0.55 * rows + 0.8))
    ax.set_xlim(0, 10)
    ax.set_ylim(rows, -1)
    ax.set_axis_off()
    box = {"boxstyle": "round,pad=0.35", "linewidth": 1}
    y = 0.0
    for name, train, tests in directions:
        n = max(1, len(tests))
        centre = y + (n - 1) / 2
        ax.text(1.6, centre, f"train on\n{train}", ha="center", va="center",
                bbox={**box, "facecolor": "#cfe3f7"}, fontsize=9)  # fmt: skip
        ax.text(5.0, centre - 0.45, name, ha="center", va="bottom", fontsize=8, color="gray")
        for k, test in enumerate(tests):
            ax.annotate("", xy=(7.2, y + k), xytext=(2.9, centre),
                        arrowprops={"arrowstyle": "->", "color": "gray"})  # fmt: skip
            ax.text(8.3, y + k, f"test on {test}", ha="center", va="center",
                    bbox={**box, "facecolor": "#fde2c8"}, fontsize=9)  # fmt: skip
        y += n + 1
    ax.set_title("Zero-shot protocol: prompts trained on one dataset, tested on unseen ones",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ stage 02


@dataclass(frozen=True)
class DescribeExample:
    """One image's stage-A exchange: the pair, the exact prompt, the model's raw answer."""

    image_id: str
    reference_id: str | None
    system: str | None
    prompt: str
    answer: str


def example_index(index: DatasetIndex, image_id: str, rule: str) -> DatasetIndex:
    """``index`` cut down to one image and its class's normal reference under ``rule``, so that
    running a stage on it handles exactly that pair (and its cache records serve the full run)."""
    keep = {image_id}
    ref = select_references(index, rule).get(str(index.row(image_id)["cls"]))
    if ref:
        keep.add(ref)
    frame = index.frame[index.frame["image_id"].isin(keep)].reset_index(drop=True)
    return DatasetIndex(name=index.name, root=index.root, frame=frame, kind=index.kind)


def describe_example(descriptions: pd.DataFrame, image_id: str) -> DescribeExample:
    """Image ``image_id``'s newest description record, with the exact prompt that was sent.

    The prompt is re-rendered from the record's template id for the image's class (its hash is part
    of the record's cache key, so it is the text the model saw).
    """
    hits = descriptions[descriptions["image_id"] == image_id]
    if hits.empty:
        raise KeyError(f"no description of {image_id!r}; run the describe stage on it first")
    rec = hits.iloc[-1]
    template = load_template(str(rec["template_id"]))
    ref = rec.get("reference_id")
    return DescribeExample(
        image_id=str(rec["image_id"]),
        reference_id=None if ref is None or pd.isna(ref) else str(ref),
        system=template.system,
        prompt=template.render(class_name=str(rec["cls"])),
        answer=str(rec["text"]) if rec["status"] == "ok" else f"FAILED ({rec.get('error')})",
    )


def pair_figure(index: DatasetIndex, image_id: str, reference_id: str | None) -> Figure:
    """Image 1 (the class's normal reference) beside Image 2 (the test image), as the VLM sees them."""
    ids = [i for i in (reference_id, image_id) if i]
    titles = ["Image 1: normal reference", "Image 2: test image"][-len(ids) :]
    fig, axes = plt.subplots(1, len(ids), figsize=(2.8 * len(ids), 3), squeeze=False)
    for ax, iid, title in zip(axes[0], ids, titles, strict=True):
        ax.imshow(load_image(index.abs_path(index.row(iid)["image"]), 256).permute(1, 2, 0))
        ax.set_title(f"{title}\n{iid}", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ stage 03


def gate_reason(llm_anomaly: bool | None, description: str, rule: str) -> str:
    """Why the anti-false-alarm gate lets a phrase through or not, in one sentence.

    Example:
        >>> gate_reason(True, "No anomaly", "llm_and_vlm")
        "judged NORMAL: the LLM reports a defect, but the VLM answered 'No anomaly' and rule llm_and_vlm lets the VLM veto it; no phrase enters the prompt"
    """
    if llm_anomaly is None:
        return "no verdict: the extraction failed (see its reason); no phrase enters the prompt"
    anomalous = verdict(llm_anomaly, description, rule)  # type: ignore[arg-type]
    vlm_no = vlm_says_no_anomaly(description)
    if anomalous:
        return (
            f"judged ANOMALOUS: the LLM reports a defect and the VLM did not answer 'No anomaly' "
            f"(rule {rule}); the phrase enters the abnormal prompt"
        )
    if llm_anomaly and vlm_no:
        return (
            f"judged NORMAL: the LLM reports a defect, but the VLM answered 'No anomaly' and rule "
            f"{rule} lets the VLM veto it; no phrase enters the prompt"
        )
    return f"judged NORMAL: the LLM reports no defect (rule {rule}); no phrase enters the prompt"


def example_description(descriptions: pd.DataFrame) -> pd.Series | None:
    """The first successful description (by ``image_id``) that reports a difference, else the first
    successful one; None when every description failed (stage 02's failure table says why)."""
    ok = descriptions[descriptions["status"] == "ok"].sort_values("image_id")
    if ok.empty:
        return None
    reporting = ok[~ok["text"].map(vlm_says_no_anomaly)]
    return (reporting if len(reporting) else ok).iloc[0]


def extraction_example(description: str, result: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """One description's stage-B exchange: the exact prompt (system and user message), the model's
    raw answer, the parsed record and the gate's decision with its reason.

    ``result`` is what :func:`hxpe.agent.extract_one` returned for ``description``; ``cfg`` is the
    profile's ``AgentConfig``.
    """
    template = load_template(cfg.extract.template)
    fields = ("anomaly", "defect_type", "location", "appearance", "phrase")
    return {
        "system": template.system,
        "prompt": template.render(description=description),
        "raw": result["raw"],
        "parsed": {f: result[f] for f in fields} if result["status"] == "ok" else None,
        "error": result.get("error"),
        "verdict": result["verdict"],
        "reason": gate_reason(result["anomaly"], description, cfg.anti_false_alarm),
    }


def gate_figure(index: DatasetIndex, image_id: str, example: dict[str, Any]) -> Figure:
    """The image of an :func:`extraction_example` with its mask, the extracted phrase and the
    gate's decision in the title (what the prompt of this image will carry)."""
    fig = image_mask_figure(index, index.row(image_id))
    phrase = (example["parsed"] or {}).get("phrase") or "(none)"
    decision = example["reason"].split(":")[0]
    fig.suptitle(f"{image_id}\nphrase: {phrase}\ngate: {decision}", fontsize=8)
    fig.tight_layout()
    return fig


def outcome_counts(extractions: pd.DataFrame) -> pd.DataFrame:
    """How many images the gate calls anomalous or normal, and how many failed, with the reason.

    Example:
        >>> frame = pd.DataFrame({"status": ["ok", "ok", "failed"], "verdict": [True, False, None],
        ...                       "error": [None, None, "invalid_json"]})
        >>> outcome_counts(frame).to_dict("records")
        [{'outcome': 'anomalous', 'reason': '', 'n': 1}, {'outcome': 'failed', 'reason': 'invalid_json', 'n': 1}, {'outcome': 'normal', 'reason': '', 'n': 1}]
    """
    outcome = [
        "failed" if s != "ok" else ("anomalous" if bool(v) else "normal")
        for s, v in zip(extractions["status"], extractions["verdict"], strict=True)
    ]
    reason = [
        str(e).split(":")[0] if o == "failed" and isinstance(e, str) else ""
        for o, e in zip(outcome, extractions["error"], strict=True)
    ]
    frame = pd.DataFrame({"outcome": outcome, "reason": reason})
    return frame.groupby(["outcome", "reason"]).size().rename("n").reset_index()


# ------------------------------------------------------------------------------------ stage 04


def knob_overrides(
    base: str,
    *,
    beta: float | None = None,
    gamma: float | None = None,
    tau: float | None = None,
    sigma: float | None = None,
    layout: str | None = None,
) -> dict[str, Any]:
    """The ``model:`` overrides of notebook 04's knobs (None = the profile's value), in the shape
    a params file takes them: β ``vfm.bias_beta``, γ ``vfm.salience_weight``, τ the base's
    ``temperature``, σ ``sigma``, the base's ``text_layout``.

    Example:
        >>> knob_overrides("adaclip", beta=2.0, layout="slots")
        {'vfm': {'bias_beta': 2.0}, 'adaclip': {'text_layout': 'slots'}}
    """
    vfm = {k: v for k, v in (("bias_beta", beta), ("salience_weight", gamma)) if v is not None}
    section = {k: v for k, v in (("temperature", tau), ("text_layout", layout)) if v is not None}
    out: dict[str, Any] = {}
    if vfm:
        out["vfm"] = vfm
    if section:
        out[base] = section
    if sigma is not None:
        out["sigma"] = sigma
    return out


def with_knobs(model_cfg: Any, overrides: dict[str, Any]) -> Any:
    """``model_cfg`` with :func:`knob_overrides` applied and validated (a bad layout is refused
    as the params file would refuse it)."""
    from hxpe.config import deep_merge

    return type(model_cfg).model_validate(deep_merge(model_cfg.model_dump(), overrides))


def active_settings(model_cfg: Any, train_cfg: Any) -> pd.DataFrame:
    """The settings the walk-through's equations depend on: the value that runs, its config key,
    and the alternatives."""
    from typing import get_args

    a = model_cfg.arithmetic
    section = type(a).model_fields
    rows = [
        (
            "base",
            model_cfg.base,
            "model.base",
            get_args(type(model_cfg).model_fields["base"].annotation),
        ),
    ]
    for key in ("text_layout", "layer_fusion", "image_loss"):
        if key in section:
            rows.append(
                (
                    key,
                    getattr(a, key),
                    f"model.{model_cfg.base}.{key}",
                    get_args(section[key].annotation),
                )
            )
    vfm_fields = type(model_cfg.vfm).model_fields
    if model_cfg.vfm.enabled:
        for key in ("mode", "distance"):
            rows.append(
                (f"vfm.{key}", getattr(model_cfg.vfm, key), f"model.vfm.{key}",
                 get_args(vfm_fields[key].annotation))
            )  # fmt: skip
    rows += [
        ("τ", a.temperature, f"model.{model_cfg.base}.temperature", ()),
        ("σ", model_cfg.sigma, "model.sigma", ()),
    ]
    if model_cfg.vfm.enabled:
        rows += [
            ("β", model_cfg.vfm.bias_beta, "model.vfm.bias_beta", ()),
            ("γ", model_cfg.vfm.salience_weight, "model.vfm.salience_weight", ()),
        ]
    weights = train_cfg.loss_weights or a.loss_weights
    rows.append(("loss weights", dict(weights), "train.loss_weights / base", ()))
    return pd.DataFrame(
        [
            {
                "setting": n,
                "active": str(v),
                "config key": k,
                "alternatives": ", ".join(str(o) for o in opts if o != v),
            }
            for n, v, k, opts in rows
        ]  # fmt: skip
    )


def example_with_phrase(index: DatasetIndex, phrases: dict[str, str | None]) -> pd.Series:
    """The first anomalous test image (by ``image_id``) that carries a gated phrase, else
    :func:`example_row`."""
    frame = index.frame.sort_values("image_id")
    hits = frame[(frame["split"] == "test") & (frame["label"] == 1)]
    hits = hits[hits["image_id"].map(lambda i: bool(phrases.get(i)))]
    return hits.iloc[0] if len(hits) else example_row(index)


def prompt_sentences(
    text_bank: Any, phrase: str, per_prompt: int | None = None, obj: str | None = None
) -> pd.DataFrame:
    """The model's normal and abnormal prompt sentences, without and with ``phrase`` (the first
    ``per_prompt`` of each ensemble, or all), for the object word ``obj`` (None: the bank's
    generic word; :meth:`TextBank.objects` gives an image's).

    ``text_bank`` is ``model.text`` (:class:`hxpe.model.explainable.TextBank`); the sentences come from
    its own ``sentences`` method, so they are exactly what the text encoder reads.
    """
    rows = []
    for kind, with_phrase in (("normal", False), ("abnormal", False), ("abnormal", True)):
        sentences = text_bank.sentences(kind, phrase if with_phrase else None, obj)[:per_prompt]
        rows += [
            {"prompt": kind, "phrase": with_phrase, "k": k, "sentence": s}
            for k, s in enumerate(sentences)
        ]
    return pd.DataFrame(rows)


TOKEN_COLOURS = {
    "SOT/EOT": "#bbbbbb",
    "deep prompt (learned)": "#f4a261",
    "learnable context": "#e76f51",
    "word": "#cfe3f7",
    "phrase word": "#8ecae6",
}


def token_layout(
    text_bank: Any, kind: str, phrase: str | None, obj: str | None = None, block: int = 0
) -> list[tuple[str, str]]:
    """(token, role) of the first sentence of a prompt at the input of text block ``block``
    (0-based), in the order the text encoder reads them.

    The layout is :mod:`hxpe.model.clip_tower`'s ``[SOT] [P..] [C..] words [EOT]`` (``P``: the
    prompter's deep-prompt slots, ``text_slots``; ``C``: its learnable context, ``text_context``).
    At a block in the prompter's ``text_deep_blocks`` its deep prompt ``D1..Dp``
    (``text_deep_length`` tokens) replaces the tokens right after SOT: the slots (layout
    ``slots``), or the first context or word tokens (layout ``overwrite``, both authors), which
    that block no longer sees. Words that belong to the phrase are marked.
    """
    ids = text_bank.tokens(kind, phrase, obj)[0].tolist()
    tok = text_bank.tokenizer.tokenizer
    end = ids.index(tok.eot_token_id)
    prompter = text_bank.prompter
    n_slots, n_ctx = prompter.text_slots, prompter.text_context
    phrase_ids = tok.encode(phrase) if phrase else []
    words = ids[1 + n_slots + n_ctx : end]
    start = _find(words, phrase_ids)
    body: list[tuple[str, str]] = [(f"P{i + 1}", "slot") for i in range(n_slots)]
    body += [(f"C{i + 1}", "learnable context") for i in range(n_ctx)]
    for i, t in enumerate(words):
        inside = start is not None and start <= i < start + len(phrase_ids)
        body.append((tok.decode([t]).strip(), "phrase word" if inside else "word"))
    if block in prompter.text_deep_blocks:
        n = prompter.text_deep_length
        body = [(f"D{i + 1}", "deep prompt (learned)") for i in range(n)] + body[n:]
    return [("<SOT>", "SOT/EOT"), *body, ("<EOT>", "SOT/EOT")]


def token_layouts(
    text_bank: Any, phrase: str | None, obj: str | None = None
) -> dict[str, list[tuple[str, str]]]:
    """The first sentence of the normal, abnormal and abnormal + phrase prompts, at the first text
    block and at the first block with a deep prompt (when that is another one)."""
    deep = text_bank.prompter.text_deep_blocks
    blocks = [0] + ([deep[0]] if deep and deep[0] != 0 else [])
    out = {}
    for block in blocks:
        last = deep[-1] + 1 if deep else 1
        where = (
            f"block {block + 1}"
            if block == 0 or last == block + 1
            else f"blocks {block + 1}-{last}"
        )
        for label, kind, p in (
            ("normal", "normal", None),
            ("abnormal", "abnormal", None),
            ("abnormal + phrase", "abnormal", phrase),
        ):
            out[f"{label}, {where}"] = token_layout(text_bank, kind, p, obj, block)
    return out


def _find(seq: list[int], sub: list[int]) -> int | None:
    for i in range(len(seq) - len(sub) + 1):
        if sub and seq[i : i + len(sub)] == sub:
            return i
    return None


def token_slot_figure(layouts: dict[str, list[tuple[str, str]]], per_row: int = 12) -> Figure:
    """Coloured token boxes per prompt (``{label: token_layout(...)}``), ``per_row`` to a line."""
    lines: list[tuple[str, list[tuple[str, str]]]] = []
    for label, layout in layouts.items():
        for k in range(0, len(layout), per_row):
            lines.append((label if k == 0 else "", layout[k : k + per_row]))
    width = max(len(tokens) for _, tokens in lines)
    fig, ax = plt.subplots(figsize=(0.8 * width + 2.4, 0.5 * len(lines) + 0.9))
    colours = {**TOKEN_COLOURS, "slot": "#ffe8cc"}
    for r, (label, tokens) in enumerate(lines):
        ax.text(-0.6, r, label, ha="right", va="center", fontsize=8)
        for c, (token, role) in enumerate(tokens):
            ax.add_patch(plt.Rectangle((c - 0.47, r - 0.32), 0.94, 0.64,
                                       facecolor=colours[role], edgecolor="white"))  # fmt: skip
            ax.text(c, r, token, ha="center", va="center", fontsize=7)
    used = {role for _, layout in layouts.items() for _, role in layout}
    shown = {k: v for k, v in colours.items() if k in used}
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c) for c in shown.values()]
    ax.legend(handles, shown, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(shown),
              fontsize=8, frameon=False)  # fmt: skip
    ax.set_xlim(-0.6, width)
    ax.set_ylim(len(lines) - 0.5, -0.5)
    ax.set_axis_off()
    fig.tight_layout()
    return fig


def vfm_panels(steps: Any, index: int = 0) -> dict[str, np.ndarray]:
    """The DINOv2 prompt of image ``index`` of a traced pass, step by step, on CLIP's patch grid:
    the distance ``d`` (to the reference, or the rarity without one), DINOv2's CLS salience, and
    the prompt map ``M`` the model used. ``steps``: ``out.trace.vfm``
    (:class:`hxpe.model.dinov2_prompt.VfmSteps`); nothing is recomputed here."""
    grid = tuple(steps.prompt.shape[-2:])
    has = bool(steps.has_reference[index])
    return {
        "distance d to reference" if has else "rarity d (no reference)": (
            steps.distance[index].view(grid).float().cpu().numpy()
        ),
        "DINOv2 CLS salience": steps.salience[index].view(grid).float().cpu().numpy(),
        "prompt map M": steps.prompt[index].float().cpu().numpy(),
    }


def maps_figure(
    image: np.ndarray, panels: dict[str, np.ndarray], mask: np.ndarray | None = None, cmap: str = ""
) -> Figure:
    """The image (mask outlined) and one heat map per entry of ``panels``, each with its colour bar."""
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.6 * (len(panels) + 1), 2.9))
    axes[0].imshow(image)
    if mask is not None and mask.any():
        axes[0].contour(mask, levels=[0.5], colors="red", linewidths=1)
    axes[0].set_title("image", fontsize=9)
    for ax, (title, values) in zip(axes[1:], panels.items(), strict=True):
        shown = ax.imshow(values, cmap=cmap or (VFM_CMAP if "prompt" in title else MAP_CMAP))
        ax.set_title(title, fontsize=9)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def layer_panels(layer_maps: list[torch.Tensor], layers: Sequence[int]) -> dict[str, np.ndarray]:
    """Per CLIP layer of one forward pass, image 0's abnormal probability ``p^l_a`` on the patch
    grid (``out.layer_maps``, as the model returned it)."""
    return {
        f"layer {layer}: p_a": m[0, 1].detach().float().cpu().numpy()
        for layer, m in zip(layers, layer_maps, strict=True)
    }


def mixed_batch(dataset: Any, n: int = 2, first: str | None = None) -> dict:
    """A collated batch of ``n`` items of an :class:`~hxpe.data.torch_dataset.IndexDataset`:
    anomalous and normal images alternating (so every loss term is defined), image ``first`` (an
    ``image_id``) leading when given."""
    from torch.utils.data import default_collate

    rows = dataset.rows
    labels = rows["label"].to_numpy()
    lead = [int(np.flatnonzero(rows["image_id"].to_numpy() == first)[0])] if first else []
    anomalous = [int(i) for i in np.flatnonzero(labels == 1) if int(i) not in lead]
    normal = [int(i) for i in np.flatnonzero(labels == 0) if int(i) not in lead]
    first_kind, second_kind = (
        (anomalous, normal) if lead and labels[lead[0]] == 0 else (normal, anomalous)
    )
    # the image after the lead has the other label
    picks = lead + [i for pair in zip(first_kind, second_kind, strict=False) for i in pair]
    picks = (picks + [i for i in range(len(labels)) if i not in picks])[:n]
    return default_collate([dataset[i] for i in picks])


def loss_table(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> pd.DataFrame:
    """The loss terms of one batch with their weights and weighted contributions to the total.

    Example:
        >>> t = {"total": torch.tensor(3.0), "focal": torch.tensor(1.0), "dice": torch.tensor(2.0)}
        >>> loss_table(t, {"focal": 1.0, "dice": 1.0}).to_dict("records")[-1]
        {'term': 'total', 'value': 3.0, 'weight': nan, 'weighted': 3.0}
    """
    rows = [
        {
            "term": name,
            "value": float(value.detach()),
            "weight": float(weights.get(name, 0.0)),
            "weighted": float(weights.get(name, 0.0)) * float(value.detach()),
        }
        for name, value in terms.items()
        if name != "total"
    ]
    total = float(terms["total"].detach())
    rows.append({"term": "total", "value": total, "weight": float("nan"), "weighted": total})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ stage 05


def curves_figure(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    maps: np.ndarray,
    fpr_limit: float = 0.3,
    title: str = "",
    convention: str = "exact",
) -> Figure:
    """Image ROC, pixel ROC and the PRO curve of one class, the PRO area up to ``fpr_limit`` shaded;
    the AUPRO in the title is the ``convention`` the tables use (the other one beside it)."""
    from hxpe.evaluation.metrics import aupro, auroc, pro_curve, roc_curve

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    fpr, tpr = roc_curve(labels, scores)
    axes[0].plot(fpr, tpr, drawstyle="default")
    axes[0].set_title(f"image ROC, AUROC {auroc(labels, scores):.3f}", fontsize=9)
    pix_labels, pix_scores = masks.reshape(-1) > 0, maps.reshape(-1)
    fpr, tpr = roc_curve(pix_labels, pix_scores)
    axes[1].plot(fpr, tpr)
    axes[1].set_title(f"pixel ROC, AUROC {auroc(pix_labels, pix_scores):.3f}", fontsize=9)
    for ax in axes[:2]:
        ax.plot([0, 1], [0, 1], ls=":", color="gray")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
    fpr, pro = pro_curve(masks, maps)
    other = "anomalyclip" if convention == "exact" else "exact"
    value = aupro(masks, maps, convention, fpr_limit)
    other_value = aupro(masks, maps, other, fpr_limit)
    axes[2].plot(fpr, pro)
    inside = fpr <= fpr_limit
    axes[2].fill_between(fpr[inside], pro[inside], alpha=0.3)
    axes[2].axvline(fpr_limit, color="red", ls="--", lw=1)
    axes[2].text(fpr_limit, 0.03, f" FPR {fpr_limit}", color="red", fontsize=8)
    axes[2].set(xlabel="false positive rate (normal pixels)", ylabel="per-region overlap",
                xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    axes[2].set_title(
        f"PRO curve, AUPRO@{fpr_limit} {value:.3f} ({convention}; {other}: {other_value:.3f})",
        fontsize=9,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def class_curve_inputs(
    store: Any, index: DatasetIndex, cls: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, scores, masks, maps)`` of one class from a stage-05 :class:`MapStore`."""
    from hxpe.evaluation.scoring import class_masks

    ids, maps = store.class_maps(cls)
    masks = class_masks(index, ids, maps.shape[-1])
    labels = index.frame.set_index("image_id").loc[ids, "label"].to_numpy().astype(int)
    scores = store.scores().set_index("image_id").loc[ids, "image_score"].to_numpy(float)
    return labels, scores, masks, maps


def curve_class(index: DatasetIndex) -> str:
    """The first class (sorted) with normal and anomalous test images, whose curves are defined."""
    test = index.split("test")
    for cls in index.classes:
        labels = set(test[test["cls"] == cls]["label"])
        if labels == {0, 1}:
            return cls
    raise ValueError(f"no class of {index.name} has both normal and anomalous test images")


# ------------------------------------------------------------------------------------ stage 06


def pixel_f1_threshold(masks: np.ndarray, maps: np.ndarray) -> float:
    """The map value whose cut ``map >= t`` has the highest pixel F1 against ``masks`` (one sort).

    Example:
        >>> pixel_f1_threshold(np.array([[0, 1, 1, 0]]), np.array([[0.1, 0.9, 0.6, 0.7]]))
        0.6
    """
    labels = np.asarray(masks).reshape(-1) > 0
    scores = np.asarray(maps, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(y)[ends]
    fp = ends + 1 - tp
    f1 = 2 * tp / np.maximum(tp + fp + labels.sum(), 1)
    return float(s[ends][int(np.argmax(f1))])


def decision_example(masks: np.ndarray, maps: np.ndarray, threshold: float) -> int:
    """The image (index into ``masks``/``maps`` [N, H, W]) that best shows how to read a map cut at
    ``threshold``: among images with a defect, the highest pixel F1 of ``map >= threshold``
    against the mask (then the larger defect); without any defect, the image whose map reaches
    highest. Chosen by what the cut finds, not by the image score.

    Example:
        >>> masks = np.zeros((3, 2, 2)); masks[1, 0, 0] = masks[2, 0, :] = 1
        >>> maps = np.zeros((3, 2, 2)); maps[0] = 0.9; maps[2, 0, 0] = 0.8
        >>> decision_example(masks, maps, 0.5)
        2
    """
    gt = np.asarray(masks).reshape(len(masks), -1) > 0
    pred = np.asarray(maps).reshape(len(maps), -1) >= threshold
    if not gt.any():
        return int(np.asarray(maps).reshape(len(maps), -1).max(1).argmax())
    tp = (gt & pred).sum(1)
    f1 = 2 * tp / np.maximum(gt.sum(1) + pred.sum(1), 1)
    keys = [(f1[i], gt[i].sum(), -i) for i in range(len(gt)) if gt[i].any()]
    return int(-max(keys)[2])


def decision_figure(
    image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray, threshold: float
) -> Figure:
    """How to read a map: the image with its mask, the map, and the map cut at ``threshold`` with
    true positives (green), false positives (red) and missed defect pixels (blue)."""
    pred = anomaly_map >= threshold
    gt = mask > 0.5
    overlay = np.zeros((*pred.shape, 3))
    overlay[pred & gt] = (0.1, 0.8, 0.1)
    overlay[pred & ~gt] = (0.9, 0.1, 0.1)
    overlay[~pred & gt] = (0.1, 0.3, 0.95)
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 3))
    axes[0].imshow(image)
    if gt.any():
        axes[0].contour(gt, levels=[0.5], colors="red", linewidths=1)
    axes[0].set_title("image, ground truth outlined", fontsize=9)
    shown = axes[1].imshow(anomaly_map, cmap=MAP_CMAP, vmin=0, vmax=max(1e-6, anomaly_map.max()))
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03)
    axes[1].set_title("anomaly map", fontsize=9)
    axes[2].imshow(image)
    axes[2].imshow(overlay, alpha=0.55)
    axes[2].set_title(f"map ≥ {threshold:.3f}: TP green, FP red, FN blue", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig
