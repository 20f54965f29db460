"""Contrastive pretraining of the demo CLIP (both towers) on the generated scenes.

Three losses, summed:

- **image-caption**: CLIP's symmetric InfoNCE between the image embedding (``ln_post(CLS) @ proj``)
  and the caption embedding, with every caption of the same (class, defect kind) counted as a
  positive (soft targets), since generated captions repeat;
- **patch-region**: each patch token of the blocks the method reads (``dense_layers``), taken to the
  joint space (``ln_post`` then ``proj``, as the method does), is classified among the
  texts of its class's regions (the normal surface, or one of the six defect kinds on it,
  :func:`hxpe.backbones.scenes.region_caption`), the target being the patch's defect coverage; the
  image's own defect phrase in a sentence (the extractor's words: size, colour, kind, place) stands
  for its defect kind, and on a normal scene a decoy phrase joins the texts. This is the
  region-caption alignment that anomaly maps read off CLIP's patches, with and without a phrase;
- **prompt wording**: each patch is also classified between a normal and an abnormal sentence of its
  class worded as the methods word their prompts (a template and a state drawn each step from all of
  ``hxpe/model/prompts.yaml``, :func:`ensemble_sentences`), the target being its coverage. A
  web-trained CLIP has met such sentences; without them the small text tower reads "a bad photo of
  the bracket with defect." by chance, and the maps of one class may come out inverted.

The vision tower runs through :class:`hxpe.model.clip_tower.VisualEncoder` (the code the method uses), at
128 px (native, a 16 x 16 grid of 8 px patches, the demo evaluation's) and 112 px (14 x 14) in
alternate steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hxpe.backbones.data import CLASS_NAMES, DEFECT_KINDS, PretrainSet, patch_coverage, resize
from hxpe.backbones.scenes import region_caption
from hxpe.backbones.schedule import Curve, PretrainSchedule, batches
from hxpe.model.clip_tower import VisualEncoder
from hxpe.model.explainable import prompt_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipRecipe(PretrainSchedule):
    """Settings of the CLIP pretraining: the schedule's defaults, a longer run, and its loss terms."""

    steps: int = 2400
    dense_weight: float = 1.0
    dense_layers: tuple[int, ...] = (1, 2, 3, 4)  # 1-based blocks whose patches are aligned
    hard_negatives: bool = False  # each image's other-state caption joins its InfoNCE negatives
    state_weight: float = 0.0  # weight of the image-level state loss (CLS among region texts)
    ensemble_weight: float = 1.0  # weight of the patch loss against the methods' prompt wording


def soft_infonce(
    a: torch.Tensor,
    b: torch.Tensor,
    same: torch.Tensor,
    scale: torch.Tensor,
    negatives: torch.Tensor | None = None,
):
    """Symmetric InfoNCE of unit rows ``a`` and ``b`` with ``same`` [B, B] marking positives.

    ``negatives`` [M, D] (optional, unit rows): more texts that no image matches (hard negatives),
    added to the image-to-text softmax only."""
    logits = scale * a @ b.T
    target = same.float() / same.float().sum(dim=1, keepdim=True)
    image_to_text = logits
    if negatives is not None:
        image_to_text = torch.cat([logits, scale * a @ negatives.T], dim=1)
    return 0.5 * (
        torch.sum(-target * image_to_text.log_softmax(dim=1)[:, : len(b)], dim=1).mean()
        + torch.sum(-target * logits.T.log_softmax(dim=1), dim=1).mean()
    )


def state_loss(
    image: torch.Tensor,
    region_text: torch.Tensor,
    classes: torch.Tensor,
    defects: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of each unit image embedding [B, D] over its class's region texts
    ([C, 1 + K, D]: the flawless object, or one of the K defect kinds on it), the target being its
    defect state: the image-level counterpart of :func:`dense_loss`, so that the global embedding
    tells a damaged object from a flawless one."""
    logits = scale * torch.einsum("bd,bkd->bk", image, region_text[classes])
    return F.cross_entropy(logits, defects)


def encode_text(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text`` on the tokens up to the longest text's end-of-text token.

    The text tower's attention is causal and the feature is read at the end-of-text token, so the
    padding after it changes nothing: the result equals ``clip.encode_text(tokens)`` (a test pins
    it) at a fraction of the cost for short captions."""
    length = int(tokens.argmax(dim=-1).max()) + 1
    x = clip.token_embedding(tokens[:, :length]) + clip.positional_embedding[:length]
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:length, :length]))
    return x[torch.arange(len(tokens)), tokens.argmax(dim=-1)] @ clip.text_projection


def region_tokens(tokenizer) -> torch.Tensor:
    """Tokens of every (class, region) text: [n_classes * (1 + n_defects), 77], class-major."""
    texts = [region_caption(c, d) for c in CLASS_NAMES for d in [None, *DEFECT_KINDS]]
    return tokenizer(texts)


def dense_loss(
    patches: torch.Tensor,
    region_text: torch.Tensor,
    classes: torch.Tensor,
    defects: torch.Tensor,
    coverage: torch.Tensor,
    scale: torch.Tensor,
    phrase_text: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft cross-entropy of each patch [B, N, D] over its class's region texts, balanced.

    ``region_text`` [C, 1 + K, D] unit rows; the target of a patch is ``coverage`` on its image's
    defect kind and ``1 - coverage`` on the normal text. Defects cover a few patches of an image,
    so the loss is the mean over the patches that a defect touches plus the mean over the others
    (either mean alone when the batch has no patch of that kind).

    ``phrase_text`` [B, D] (optional): each image's phrase sentence
    (:func:`hxpe.backbones.scenes.phrase_caption`) takes the place of its defect kind's text, or,
    on a normal image, joins as a decoy the patches must not match."""
    texts = region_text[classes]  # [B, 1 + K, D]
    if phrase_text is not None:
        texts = texts.clone()
        slot = torch.where(defects > 0, defects, torch.ones_like(defects))
        texts[torch.arange(len(defects)), slot] = phrase_text
    logits = scale * torch.einsum("bnd,bkd->bnk", F.normalize(patches, dim=-1), texts)
    target = torch.zeros_like(logits)
    target[..., 0] = 1 - coverage
    rows = torch.arange(len(defects))
    target[rows, :, defects] += coverage * (defects > 0)[:, None]
    target[..., 0] += coverage * (defects == 0)[:, None]
    ce = torch.sum(-target * logits.log_softmax(dim=-1), dim=-1)
    return balanced_mean(ce, (coverage > 0) & (defects > 0)[:, None])


def balanced_mean(values: torch.Tensor, touched: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the patches a defect touches plus the mean over the others
    (either mean alone when there is none of that kind)."""
    parts = [values[m].mean() for m in (touched, ~touched) if m.any()]
    return torch.stack(parts).sum()


Vocabulary = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def prompt_vocabulary() -> Vocabulary:
    """(templates, normal states, abnormal states) of every prompt the methods send to CLIP
    (``hxpe/model/prompts.yaml``, all template sets): the wording a web-trained CLIP has met, which
    the demo CLIP learns beside its captions."""
    data = prompt_data()
    templates = tuple(dict.fromkeys(t for ts in data["templates"].values() for t in ts))
    return templates, tuple(data["states"]["normal"]), tuple(data["states"]["abnormal"])


def ensemble_sentences(gen: torch.Generator, vocabulary: Vocabulary | None = None) -> list[str]:
    """Per class a normal then an abnormal sentence, template and states drawn from ``gen``:
    [2 * n_classes], class-major. ``vocabulary``: :func:`prompt_vocabulary`'s, read once by a
    caller that draws every step (None = read it now)."""
    templates, normal, abnormal = vocabulary or prompt_vocabulary()

    def pick(options: tuple[str, ...]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    out = []
    for cls in CLASS_NAMES:
        template = pick(templates)
        out += [template.format(pick(states).format(obj=cls)) for states in (normal, abnormal)]
    return out


def ensemble_loss(
    patches: torch.Tensor,
    pair_text: torch.Tensor,
    classes: torch.Tensor,
    coverage: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Soft two-way cross-entropy of each patch [B, N, D] between its class's normal and abnormal
    sentence ([C, 2, D] unit rows, :func:`ensemble_sentences`), the target being the patch's defect
    coverage, balanced as :func:`dense_loss`: the comparison every anomaly map of the methods makes."""
    logits = scale * torch.einsum("bnd,bkd->bnk", F.normalize(patches, dim=-1), pair_text[classes])
    target = torch.stack([1 - coverage, coverage], dim=-1)
    ce = torch.sum(-target * logits.log_softmax(dim=-1), dim=-1)
    return balanced_mean(ce, coverage > 0)


def train_clip(
    clip: nn.Module, tokenizer, data: PretrainSet, recipe: ClipRecipe, seed: int
) -> Curve:
    """Train ``clip`` in place on ``data``; returns the loss curve."""
    clip.requires_grad_(True).train()
    encoder = VisualEncoder(clip.visual, layers=list(recipe.dense_layers))
    tokens = tokenizer(data.captions)
    negative_tokens = tokenizer(data.negatives) if recipe.hard_negatives else None
    phrase_tokens = tokenizer(data.phrases)
    regions = region_tokens(tokenizer)
    n_cls, n_reg = len(CLASS_NAMES), 1 + len(DEFECT_KINDS)
    opt = torch.optim.AdamW(clip.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    wording, vocabulary = torch.Generator().manual_seed(seed + 1), prompt_vocabulary()
    curve = Curve()
    for step, idx, size in batches(recipe, len(data), opt, seed):
        feats = encoder(resize(data.images[idx], size))
        grid = feats.grid[0]
        image_emb = F.normalize(feats.cls, dim=-1)
        text_emb = F.normalize(encode_text(clip, tokens[idx]), dim=-1)
        key = data.classes[idx] * 16 + data.defects[idx]
        scale = clip.logit_scale.exp().clamp(max=100)
        negatives = None
        if negative_tokens is not None:
            negatives = F.normalize(encode_text(clip, negative_tokens[idx]), dim=-1)
        loss_caption = soft_infonce(
            image_emb, text_emb, key[:, None] == key[None, :], scale, negatives
        )
        region_emb = F.normalize(encode_text(clip, regions), dim=-1).view(n_cls, n_reg, -1)
        phrase_emb = F.normalize(encode_text(clip, phrase_tokens[idx]), dim=-1)
        coverage = patch_coverage(resize(data.masks[idx][:, None], size)[:, 0], grid)
        loss_dense = torch.stack(
            [
                dense_loss(
                    p, region_emb, data.classes[idx], data.defects[idx], coverage, scale, phrase_emb
                )
                for p in feats.patches
            ]
        ).mean()
        loss = loss_caption + recipe.dense_weight * loss_dense
        losses = {"caption": loss_caption.detach(), "patch_region": loss_dense.detach()}
        if recipe.ensemble_weight:
            pair = encode_text(clip, tokenizer(ensemble_sentences(wording, vocabulary)))
            pair = F.normalize(pair, dim=-1).view(n_cls, 2, -1)
            loss_ensemble = torch.stack(
                [ensemble_loss(p, pair, data.classes[idx], coverage, scale) for p in feats.patches]
            ).mean()
            loss = loss + recipe.ensemble_weight * loss_ensemble
            losses["prompt_wording"] = loss_ensemble.detach()
        if recipe.state_weight:
            loss_state = state_loss(
                image_emb, region_emb, data.classes[idx], data.defects[idx], scale
            )
            loss = loss + recipe.state_weight * loss_state
            losses["state"] = loss_state.detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.log(step + 1, total=loss.detach(), **losses)
        if (step + 1) % 50 == 0:
            log.info("clip step %d/%d: %s", step + 1, recipe.steps, curve.rows[-1])
    clip.requires_grad_(False).eval()
    return curve
