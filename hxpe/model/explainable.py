"""The explainable text prompts (the paper's first enhancement): the gate, the phrase slot and the
fusion, and the per-image normal/abnormal text embeddings they give.

* **Gate** (:func:`gate`): a phrase that is ``None`` or empty (the agent judged the image normal, or
  failed) gives the generic abnormal prompt.
* **Phrase slot** (:class:`PromptSet`): sentences as data, the state x template ensembles of
  ``prompts.yaml`` with an ``{obj}`` slot. In mode ``in_prompt`` the abnormal prompt of an image with
  a gated phrase renders ``{obj}`` as ``"object with <phrase>"`` (``model.explain.object_template``).
* **Fusion** (mode ``fuse``): the phrase is encoded alone by the frozen text encoder and fused,
  ``g_a' = normalize(g_a + λ g_e)``.

Batching (:class:`TextBank`): sentences of all prompts of a batch go through the text encoder in one
call. Unless the text prompts depend on the image (AdaCLIP dynamic prompts), the normal prompt is
encoded once and each distinct phrase once.

Caching across batches: the module holds no cache. A caller may pass one (:class:`PhraseCache`, owned
by the inference code, :mod:`hxpe.model.inference`) with each call; prompt embeddings are then kept
per (kind, phrase, object word) and reused by later batches. It is consulted only in eval mode with
gradients off, and is emptied whenever a trainable parameter changes (its version counter, storage,
dtype or device), the autocast setting or the trim flag differs, so it never serves a stale embedding.

Example:
    >>> ps = PromptSet(normal=("{obj}.",), abnormal=("damaged {obj}.",))
    >>> ps.render("abnormal", "object", phrase="a small scratch")
    ['damaged object with a small scratch.']
    >>> ps.render("abnormal", "object", phrase=None)
    ['damaged object.']
    >>> gate(["  a scratch ", "", None], enabled=True), gate(["a scratch"], enabled=False)
    (['a scratch', None, None], [None])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hxpe.model.clip_tower import ClipTokenizer, PromptTokenizer, TextEncoder

PROMPTS_FILE = Path(__file__).with_name("prompts.yaml")
Kind = Literal["normal", "abnormal"]


class ExplainConfig(BaseModel):
    """Explainable text prompts: the image's gated defect phrase in its abnormal prompt."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    mode: Literal["in_prompt", "fuse"] = Field(
        "in_prompt", description="Phrase inside the abnormal prompt, or encoded alone and fused."
    )
    object_template: str = Field(
        "{obj} with {phrase}", description="Replaces {obj} of the abnormal prompts."
    )
    fuse_template: str = Field("{phrase}", description="Text encoded alone in mode 'fuse'.")
    fuse_lambda: float = Field(1.0, ge=0.0, description="g_a' = normalize(g_a + λ g_e).")
    learn_lambda: bool = Field(False, description="Train λ (mode 'fuse').")


# ------------------------------------------------------------ the phrase slot: prompt sentences


@cache
def prompt_data() -> dict[str, Any]:
    """The contents of ``prompts.yaml``: ``states`` and ``templates``."""
    data: dict[str, Any] = yaml.safe_load(PROMPTS_FILE.read_text())
    return data


@dataclass(frozen=True)
class PromptSet:
    """Normal and abnormal sentence templates, each with an ``{obj}`` slot."""

    normal: tuple[str, ...]
    abnormal: tuple[str, ...]
    object_template: str = "{obj} with {phrase}"

    def render(self, kind: Kind, obj: str, phrase: str | None = None) -> list[str]:
        """The sentences of one prompt; ``phrase`` (abnormal only) enters the object slot."""
        if phrase and kind == "abnormal":
            obj = self.object_template.format(obj=obj, phrase=phrase)
        return [t.format(obj=obj) for t in getattr(self, kind)]


def ensemble(template_set: str, object_template: str = "{obj} with {phrase}") -> PromptSet:
    """The state x template ensemble named ``template_set`` in ``prompts.yaml``."""
    data = prompt_data()
    if template_set not in data["templates"]:
        raise KeyError(
            f"No template set {template_set!r} in {PROMPTS_FILE}; known: {sorted(data['templates'])}."
        )
    templates = data["templates"][template_set]

    def compose(states: list[str]) -> tuple[str, ...]:
        return tuple(t.format(s) for s in states for t in templates)

    return PromptSet(
        normal=compose(data["states"]["normal"]),
        abnormal=compose(data["states"]["abnormal"]),
        object_template=object_template,
    )


# ------------------------------------------------------------ the gate, the text embeddings, the fusion


@dataclass(frozen=True)
class _Unit:
    """One prompt to encode: its kind, phrase, object word and (when conditioned) its image."""

    kind: Kind
    phrase: str | None
    obj: str
    image: int | None


def class_word(name: str) -> str:
    """A class name as AdaCLIP puts it into its prompts (``text.replace('-', ' ')``,
    caoyunkang/AdaCLIP@e27ee32 adaclip.py:213)."""
    return name.replace("-", " ")


def _tensor_signature(t: torch.Tensor) -> tuple[object, ...]:
    return (id(t), t._version, t.data_ptr(), t.dtype, t.device)


def gate(phrases: list[str | None], enabled: bool = True) -> list[str | None]:
    """Phrases with the anti-false-alarm gate applied: empty or disabled becomes ``None``."""
    return [p.strip() if (enabled and p and p.strip()) else None for p in phrases]


class TextPrompts(Protocol):
    """What :class:`TextBank` needs from a base's prompts (:class:`hxpe.model.bases.base.PromptBase`
    has it): its sentence ensemble, the slots and contexts it adds, and its deep text prompts."""

    prompt_set: PromptSet
    text_slots: int
    text_context: int
    text_conditioned: bool

    def context(self, kind: Kind) -> torch.Tensor | None: ...

    def text_deep(self, cond: torch.Tensor | None, n: int) -> list[torch.Tensor | None] | None: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


class TextBank(nn.Module):
    """Builds, tokenises and encodes the prompts of a batch; returns [B, 2, D] (normal, abnormal)."""

    def __init__(
        self,
        encoder: TextEncoder,
        tokenizer: ClipTokenizer,
        prompter: TextPrompts,
        cfg: ExplainConfig,
        object_name: str,
        class_names: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.prompter = prompter
        self.cfg = cfg
        self.object_name = object_name
        self.class_names = class_names  # prompts carry each image's class name
        self.tokenizer = PromptTokenizer(tokenizer, prompter.text_slots + prompter.text_context)
        self.plain_tokenizer = PromptTokenizer(tokenizer, 0)
        lam = torch.tensor(float(cfg.fuse_lambda))
        self.fuse_lambda = (
            nn.Parameter(lam, requires_grad=cfg.learn_lambda) if cfg.mode == "fuse" else None
        )

    def _active_cache(self, cache: PhraseCache | None, trim: bool) -> PhraseCache | None:
        """``cache`` when it may be used now (eval, no grad), validated against the current
        parameters and settings; else None."""
        if cache is None or self.training or torch.is_grad_enabled():
            return None
        device = self.encoder.token_embedding.weight.device.type
        params = [*self.prompter.parameters(), self.encoder.token_embedding.weight]
        if self.fuse_lambda is not None:
            params.append(self.fuse_lambda)
        autocast = (
            torch.is_autocast_enabled(device),
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None,
        )
        cache.check(
            (
                tuple(_tensor_signature(p) for p in params),
                autocast,
                trim,
                self.cfg,
                self.object_name,
            )
        )
        return cache

    def sentences(self, kind: Kind, phrase: str | None, obj: str | None = None) -> list[str]:
        """The sentences of one prompt; the phrase is cut to fit CLIP's context if needed."""
        ps = self.prompter.prompt_set
        obj = obj or self.object_name
        if phrase:
            phrase = self.tokenizer.fit_phrase(phrase, lambda p: ps.render(kind, obj, p))
        return ps.render(kind, obj, phrase)

    def tokens(self, kind: Kind, phrase: str | None, obj: str | None = None) -> torch.Tensor:
        """Token ids [n_sentences, 77] of one prompt (for inspection and tests)."""
        return self.tokenizer(self.sentences(kind, phrase, obj))

    def objects(self, n: int, class_names: list[str] | None) -> list[str]:
        """The object word of each image: its class name (policy ``class_name`` when names are
        given) or the generic ``object_name``."""
        if self.class_names and class_names is not None:
            if len(class_names) != n:
                raise ValueError(f"{n} images but {len(class_names)} class names")
            return [class_word(c) if c else self.object_name for c in class_names]
        return [self.object_name] * n

    def _units(self, phrases: list[str | None], objs: list[str]) -> list[_Unit]:
        in_prompt = [p if self.cfg.mode == "in_prompt" else None for p in phrases]
        if self.prompter.text_conditioned:
            return [_Unit("normal", None, o, b) for b, o in enumerate(objs)] + [
                _Unit("abnormal", p, o, b)
                for b, (p, o) in enumerate(zip(in_prompt, objs, strict=True))
            ]
        normal = [_Unit("normal", None, o, None) for o in dict.fromkeys(objs)]
        pairs = dict.fromkeys(zip(in_prompt, objs, strict=True))
        return normal + [_Unit("abnormal", p, o, None) for p, o in pairs]

    def _encode_units(
        self, units: list[_Unit], cond: torch.Tensor | None, trim: bool = True
    ) -> torch.Tensor:
        """One text-encoder call for all units; returns [n_units, D]."""
        device = self.encoder.device
        rows, owner, contexts, conds = [], [], [], []
        for u, unit in enumerate(units):
            ids = self.tokens(unit.kind, unit.phrase, unit.obj)
            rows.append(ids)
            owner += [u] * len(ids)
            ctx = self.prompter.context(unit.kind)
            if ctx is not None:
                contexts.append(ctx.expand(len(ids), -1, -1))
            if unit.image is not None and cond is not None:
                conds.append(cond[unit.image].expand(len(ids), -1))
        tokens = torch.cat(rows).to(device)
        context = torch.cat(contexts) if contexts else None
        seq_cond = torch.cat(conds) if conds else None
        deep = self.prompter.text_deep(seq_cond, tokens.shape[0])
        emb = self.encoder(tokens, context, deep, n_slots=self.prompter.text_slots, trim=trim)
        index = torch.tensor(owner, device=emb.device)
        pooled = torch.zeros(len(units), emb.shape[1], dtype=emb.dtype, device=emb.device)
        pooled = pooled.index_add(0, index, emb)
        return F.normalize(pooled, dim=-1)

    def _phrase_alone(self, phrases: list[str], trim: bool = True) -> torch.Tensor:
        """Frozen embeddings of phrases encoded on their own (mode ``fuse``), [n, D]."""
        texts = [self.cfg.fuse_template.format(phrase=p) for p in phrases]
        texts = [self.plain_tokenizer.fit_phrase(t, lambda s: [s]) for t in texts]
        with torch.no_grad():
            tokens = self.plain_tokenizer(texts).to(self.encoder.device)
            emb: torch.Tensor = self.encoder(tokens, trim=trim)
            return emb

    @staticmethod
    def _cached(
        cache: PhraseCache,
        items: Sequence[Hashable],
        encode: Callable[[list[Any]], torch.Tensor],
        tag: str = "prompt",
    ) -> torch.Tensor:
        """Rows for ``items`` from ``cache``, encoding the missing ones in one call."""
        found = [cache.get((tag, item)) for item in items]
        todo = [item for item, row in zip(items, found, strict=True) if row is None]
        fresh: dict[Hashable, torch.Tensor] = {}
        if todo:
            for item, row in zip(todo, encode(todo), strict=True):
                cache.put((tag, item), row)
                fresh[item] = row
        return torch.stack(
            [fresh[item] if row is None else row for item, row in zip(items, found, strict=True)]
        )

    def forward(
        self,
        phrases: list[str | None],
        cond: torch.Tensor | None = None,
        class_names: list[str] | None = None,
        *,
        cache: PhraseCache | None = None,
        trim: bool = True,
    ) -> torch.Tensor:
        """Text embeddings [B, 2, D]: per image (normal, abnormal), L2-normalised.

        ``cache``: a caller-owned phrase cache (see the module docstring); ``trim``: run the text
        tower only up to the last EOT token (exact; False = the full 77-token context).
        """
        phrases = gate(phrases, self.cfg.enabled)
        objs = self.objects(len(phrases), class_names)
        units = self._units(phrases, objs)
        cache = None if self.prompter.text_conditioned else self._active_cache(cache, trim)
        emb = (
            self._encode_units(units, cond, trim)
            if cache is None
            else self._cached(cache, units, lambda todo: self._encode_units(todo, cond, trim))
        )
        if self.prompter.text_conditioned:
            b = len(phrases)
            out = torch.stack([emb[:b], emb[b:]], dim=1)
        else:
            where = {(u.kind, u.phrase, u.obj): i for i, u in enumerate(units)}
            in_prompt = [p if self.cfg.mode == "in_prompt" else None for p in phrases]
            normal = emb[[where[("normal", None, o)] for o in objs]]
            abnormal = emb[
                [where[("abnormal", p, o)] for p, o in zip(in_prompt, objs, strict=True)]
            ]
            out = torch.stack([normal, abnormal], dim=1)
        if self.fuse_lambda is not None:
            out = self._fuse(out, phrases, self.fuse_lambda, cache, trim)
        return out

    def _fuse(
        self,
        out: torch.Tensor,
        phrases: list[str | None],
        lam: torch.Tensor,
        cache: PhraseCache | None,
        trim: bool,
    ) -> torch.Tensor:
        """The abnormal embedding of each image with a phrase fused with the phrase's own,
        ``normalize(g_a + λ g_e)``; images without one keep theirs."""
        distinct = [p for p in dict.fromkeys(phrases) if p is not None]
        if not distinct:
            return out
        cache = self._active_cache(cache, trim)
        g_e = (
            self._phrase_alone(distinct, trim)
            if cache is None
            else self._cached(cache, distinct, lambda ps: self._phrase_alone(ps, trim), "alone")
        )
        lookup = {p: i for i, p in enumerate(distinct)}
        has = torch.tensor([p is not None for p in phrases], device=out.device)
        extra = torch.zeros_like(out[:, 1])
        rows = [i for i, p in enumerate(phrases) if p is not None]
        extra[rows] = g_e[[lookup[p] for p in phrases if p is not None]].to(extra.dtype)
        fused = F.normalize(out[:, 1] + lam * extra, dim=-1)
        abnormal = torch.where(has[:, None], fused, out[:, 1])
        return torch.stack([out[:, 0], abnormal], dim=1)


class PhraseCache:
    """An LRU of prompt embeddings keyed by (kind, phrase), tied to a parameter signature."""

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._signature: tuple[object, ...] | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()

    def check(self, signature: tuple[object, ...]) -> None:
        """Empty the cache when ``signature`` (parameters, autocast) differs from the last one."""
        if signature != self._signature:
            self._data.clear()
            self._signature = signature

    def get(self, key: Hashable) -> torch.Tensor | None:
        hit = self._data.get(key)
        if hit is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return hit

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)
