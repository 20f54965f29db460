"""Fast batched inference against the naive per-image path: equal outputs (1e-5, as the README
says), caches owned by the inference code (the model holds none), the loader."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hxpe.data.fixtures import IndexWriter
from hxpe.data.index import DatasetIndex
from hxpe.data.torch_dataset import IndexBatch, IndexDataset, index_batches
from hxpe.model.dinov2_prompt import ReferenceCache, unique_rows
from hxpe.model.explainable import PhraseCache
from hxpe.model.inference import (
    InferenceCaches,
    collect,
    infer_fast,
    infer_naive,
    inference_caches,
    make_loader,
    maybe_compile,
    use_bf16,
)
from hxpe.model.model import build_model
from hxpe.model.tiny import tiny_model_config
from hxpe.seeding import worker_init_fn

SIZE = 112
PHRASES = ["crack", "crack", None, "small dark hole", "", "crack", None, "stain"]


def batches(n: int = 8, batch: int = 4, seed: int = 0, size: int = SIZE) -> list[IndexBatch]:
    """Collated-like batches, unpacked: mixed phrases (None, "", repeats), two shared references
    (rows with ``i % 3 == 2`` have none)."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 3, size, size, generator=g)
    refs = torch.rand(2, 3, size, size, generator=g)
    out = []
    for s in range(0, n, batch):
        idx = list(range(s, min(n, s + batch)))
        collated = {
            "image": imgs[idx],
            "phrase": [PHRASES[i % len(PHRASES)] or "" for i in idx],
            "image_id": [f"img{i}" for i in idx],
            "cls": [f"c{i % 2}" for i in idx],
            "label": torch.tensor([i % 2 for i in idx]),
            "reference": refs[[i % 2 for i in idx]],
            "has_reference": torch.tensor([i % 3 != 2 for i in idx]),
        }
        out.append(IndexBatch.from_collated(collated))
    return out


CASES = {
    "adaclip": ("adaclip", {}),
    "anomalyclip": ("anomalyclip", {}),
    "anomalyclip_attn_bias_fuse": (
        "anomalyclip",
        {"vfm": {"mode": "attn_bias"}, "explain": {"mode": "fuse"}, "score_mode": "text_max"},
    ),
    "adaclip_static_sigma2": (
        "adaclip",
        {"adaclip": {"prompt_types": ["static"]}, "sigma": 2.0, "vfm": {"enabled": False}},
    ),
    "winclip": ("winclip", {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_equals_naive_in_fp32(case: str) -> None:
    base, overrides = CASES[case]
    model = build_model(tiny_model_config(base, **overrides)).eval()
    data = batches()
    naive = collect(infer_naive(model, data))
    caches = inference_caches(model)
    fast = collect(infer_fast(model, data, precision="fp32", caches=caches))
    again = collect(infer_fast(model, data, precision="fp32", caches=caches))  # from the caches
    assert naive.image_ids == fast.image_ids == [f"img{i}" for i in range(8)]
    assert fast.labels.tolist() == naive.labels.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert naive.anomaly_maps.dtype == fast.anomaly_maps.dtype == np.float32
    assert naive.cls == fast.cls == [f"c{i % 2}" for i in range(8)]
    assert fast.anomaly_maps.shape == (8, SIZE, SIZE)
    for other in (fast, again):  # README: "agree within 1e-5 in fp32"
        assert np.abs(other.anomaly_maps - naive.anomaly_maps).max() < 1e-5
        assert np.abs(other.image_scores - naive.image_scores).max() < 1e-5
        if naive.vfm_prompts is not None:
            assert np.abs(other.vfm_prompts - naive.vfm_prompts).max() < 1e-5
    # served from the caches: the very same numbers
    assert np.array_equal(again.anomaly_maps, fast.anomaly_maps)
    assert np.array_equal(again.image_scores, fast.image_scores)


def test_references_without_flags_count_as_all_real_on_both_paths() -> None:
    """``has_reference=None`` with references: every row has one (the same as all-True flags)."""
    import dataclasses

    model = build_model(tiny_model_config("anomalyclip")).eval()
    flagged = [
        dataclasses.replace(b, has_reference=torch.ones(4, dtype=torch.bool)) for b in batches()
    ]
    unflagged = [dataclasses.replace(b, has_reference=None) for b in batches()]
    want = collect(infer_naive(model, flagged))
    for got in (
        collect(infer_naive(model, unflagged)),
        collect(infer_fast(model, unflagged, precision="fp32")),
    ):
        assert np.abs(got.anomaly_maps - want.anomaly_maps).max() < 1e-5
        assert np.abs(got.vfm_prompts - want.vfm_prompts).max() < 1e-5
    partial = collect(infer_naive(model, batches()))  # rows i % 3 == 2 without a reference
    assert np.abs(partial.vfm_prompts - want.vfm_prompts).max() > 1e-3


def test_phrase_cache_hits_and_is_invalidated_by_training() -> None:
    model = build_model(tiny_model_config("anomalyclip", vfm={"enabled": False})).eval()
    caches = inference_caches(model)
    cache = caches.phrases
    assert isinstance(cache, PhraseCache) and caches.references is None  # no DINOv2: no cache
    assert not any(isinstance(v, PhraseCache) for v in vars(model.text).values())  # pure module
    seen: list[int] = []
    hook = model.text.encoder.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        with torch.inference_mode():
            first = model.text(["crack", "crack", None, "hole"], cache=cache)
            assert seen == [4]  # normal + abnormal of crack, None, hole: one call
            second = model.text(["hole", None, "crack"], cache=cache)
            assert seen == [4]  # all hits, no encoder call
            third = model.text(["new phrase", "crack"], cache=cache)
            assert seen == [4, 1]  # only the new phrase
    finally:
        hook.remove()
    assert cache.hits > 0
    assert torch.allclose(first[3], second[0]) and torch.allclose(first[0], third[1])
    with torch.no_grad():
        uncached = model.text(["crack"])
    assert torch.allclose(uncached[0], first[0], atol=1e-6)

    # training mode or gradients on: the cache is not consulted
    model.train()
    calls_before = len(cache)
    out = model.text(["crack"], cache=cache)
    assert out.requires_grad and len(cache) == calls_before
    # a parameter update empties it
    model.eval()
    with torch.no_grad():
        model.prompter.ctx_abnormal.add_(torch.randn_like(model.prompter.ctx_abnormal))
        updated = model.text(["crack"], cache=cache)
    assert len(cache) == 2  # re-encoded after the update: normal + crack
    assert not torch.allclose(updated[0, 1], first[0, 1], atol=1e-4)


def test_phrase_cache_in_fuse_mode_keeps_the_phrases_encoded_alone() -> None:
    cfg = tiny_model_config("anomalyclip", vfm={"enabled": False}, explain={"mode": "fuse"})
    model = build_model(cfg).eval()
    cache = inference_caches(model).phrases
    seen: list[int] = []
    hook = model.text.encoder.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        with torch.inference_mode():
            first = model.text(["crack", None], cache=cache)
            # prompts (normal, generic abnormal) in one call, then the phrase alone
            assert seen == [2, 1] and (cache.hits, cache.misses) == (0, 3)
            second = model.text(["crack", None], cache=cache)
            assert seen == [2, 1] and (cache.hits, cache.misses) == (3, 3)  # all three hits
    finally:
        hook.remove()
    assert len(cache) == 3
    with torch.no_grad():
        uncached = model.text(["crack", None])
    assert torch.equal(first, second) and torch.allclose(first, uncached, atol=1e-6)


def test_phrase_cache_is_emptied_when_the_autocast_dtype_changes() -> None:
    model = build_model(tiny_model_config("anomalyclip", vfm={"enabled": False})).eval()
    cache = inference_caches(model).phrases
    seen: list[torch.dtype] = []
    hook = model.text.encoder.register_forward_hook(lambda m, a, o: seen.append(o.dtype))
    try:
        with torch.inference_mode():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = model.text(["crack"], cache=cache)
            with torch.autocast("cpu", dtype=torch.float16):
                fp16 = model.text(["crack"], cache=cache)
                again = model.text(["crack"], cache=cache)
    finally:
        hook.remove()
    assert seen == [torch.bfloat16, torch.float16]  # re-encoded once per autocast dtype
    assert (bf16.dtype, fp16.dtype) == (torch.bfloat16, torch.float16)
    assert torch.equal(again, fp16)


def test_model_forward_hands_the_phrase_cache_to_the_text_bank() -> None:
    model = build_model(tiny_model_config("anomalyclip", vfm={"enabled": False})).eval()
    cache = inference_caches(model).phrases
    with torch.inference_mode():
        for _ in range(2):
            model(torch.rand(2, 3, SIZE, SIZE), ["crack", None], phrase_cache=cache)
    # normal, abnormal(crack), abnormal(None): three misses, then three hits
    assert (cache.hits, cache.misses, len(cache)) == (3, 3, 3)


def test_phrase_cache_is_skipped_for_image_conditioned_text(caplog) -> None:
    model = build_model(tiny_model_config("adaclip", vfm={"enabled": False})).eval()
    with caplog.at_level(logging.INFO):
        caches = inference_caches(model)
    assert caches.phrases is None and caches.references is None
    assert [r.message for r in caplog.records if r.name == "hxpe.model.inference"] == [
        "Text prompts of base adaclip depend on the image (dynamic language prompts): phrase "
        "embeddings are computed per image and not cached."
    ]


def test_reference_dedup_and_cache() -> None:
    x = torch.rand(3, 3, 8, 8)
    stacked = x[[0, 1, 0, 2, 1]]
    reps, inverse = unique_rows(stacked)
    assert reps == [0, 1, 3] and inverse == [0, 1, 0, 2, 1]
    model = build_model(tiny_model_config("adaclip")).eval()
    cache = ReferenceCache()
    refs = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.vfm.reference_features(refs[[0, 1, 0]], (8, 8), cache)
        direct, _ = model.vfm.features(refs, (8, 8))
        feats2 = model.vfm.reference_features(refs[[1, 0]], (8, 8), cache)
        uncached = model.vfm.reference_features(refs[[1, 0]], (8, 8))
    assert torch.allclose(feats[0], direct[0], atol=1e-5)
    assert torch.allclose(feats[1], direct[1], atol=1e-5)
    assert torch.equal(feats[2], feats[0])
    # first call: two distinct references, two misses; second: both served
    assert (cache.hits, cache.misses, len(cache)) == (2, 2, 2)
    assert torch.equal(feats2[0], feats[1]) and torch.equal(feats2[1], feats[0])
    assert torch.equal(uncached, feats2)  # the cache changes nothing (same batch of two)
    assert (cache.hits, cache.misses) == (2, 2)  # a call without the cache leaves it alone


def _cache_kwargs(model: torch.nn.Module) -> tuple[list[dict], torch.utils.hooks.RemovableHandle]:
    """Record the cache keywords of every forward call of ``model``."""
    seen: list[dict] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append({k: kwargs.get(k) for k in ("phrase_cache", "reference_cache")})

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def _module_state(model: torch.nn.Module) -> dict[str, list[str]]:
    return {name: sorted(vars(m)) for name, m in model.named_modules()}


def test_reference_cache_across_batches_is_exact_and_owned_by_the_caller() -> None:
    model = build_model(tiny_model_config("anomalyclip")).eval()
    data = batches()
    before = _module_state(model)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    caches = InferenceCaches(references=ReferenceCache())
    seen, handle = _cache_kwargs(model)
    try:
        cached = collect(infer_fast(model, data, precision="fp32", caches=caches))
        plain = collect(infer_fast(model, data, precision="fp32", caches=InferenceCaches()))
        naive = collect(infer_naive(model, data[:1]))
    finally:
        handle.remove()
    # rows with a reference: batch 1 [r0, r1, r1] (2 misses), batch 2 [r0, r0, r1] (2 hits)
    assert caches.stats() == {"phrase_cache": None, "reference_cache": {"hits": 2, "misses": 2}}
    assert np.array_equal(cached.anomaly_maps, plain.anomaly_maps)
    assert np.array_equal(cached.image_scores, plain.image_scores)
    assert np.array_equal(cached.vfm_prompts, plain.vfm_prompts)
    # the fast path passes its caches per call; the naive path passes none
    assert [s["reference_cache"] for s in seen[:2]] == [caches.references] * 2
    assert [s["reference_cache"] for s in seen[2:4]] == [None, None]
    assert len(seen) == 4 + len(naive) and seen[4:] == [
        {"phrase_cache": None, "reference_cache": None}
    ] * len(naive)
    # the model holds no cache and no new state after the runs
    assert _module_state(model) == before
    assert not hasattr(model.vfm, "reference_cache")
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    cache_types = (PhraseCache, ReferenceCache, InferenceCaches)
    assert not any(isinstance(v, cache_types) for m in model.modules() for v in vars(m).values())


def test_fast_path_makes_fresh_caches_per_call_by_default() -> None:
    model = build_model(tiny_model_config("anomalyclip")).eval()
    seen, handle = _cache_kwargs(model)
    try:
        collect(infer_fast(model, batches(), precision="fp32"))
        collect(infer_fast(model, batches(), precision="fp32"))
    finally:
        handle.remove()
    refs = [s["reference_cache"] for s in seen]
    phrases = [s["phrase_cache"] for s in seen]
    assert all(isinstance(r, ReferenceCache) for r in refs)
    assert all(isinstance(p, PhraseCache) for p in phrases)
    # one cache object per call, shared by its two batches
    assert refs[0] is refs[1] and refs[2] is refs[3] and refs[0] is not refs[2]
    assert phrases[0] is phrases[1] and phrases[0] is not phrases[2]
    assert (refs[0].hits, refs[0].misses) == (2, 2)


def test_text_trim_is_exact() -> None:
    model = build_model(tiny_model_config("anomalyclip", vfm={"enabled": False})).eval()
    with torch.no_grad():
        trimmed = model.text(["a long crack near the edge", None])
        full = model.text(["a long crack near the edge", None], trim=False)
    assert model.text.encoder.causal
    assert torch.allclose(trimmed, full, atol=1e-5)


def _toy_index(root, n: int = 5) -> DatasetIndex:
    writer = IndexWriter(root, "toy")
    for i in range(n):
        image = (np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)
        writer.add("w", "test", "good", f"{i:03d}", image)
    return writer.index()


def test_make_loader_yields_ordered_batches(tmp_path) -> None:
    index = _toy_index(tmp_path)
    ds = IndexDataset(index, 32, "test", {index.frame.image_id[0]: "scratch"})
    loader = make_loader(ds, batch_size=2, num_workers=0, device="cpu")
    assert not loader.pin_memory
    got = list(loader)
    assert [len(b["image_id"]) for b in got] == [2, 2, 1]
    assert got[0]["image"].shape == (2, 3, 32, 32)
    assert got[0]["phrase"] == ["scratch", ""]
    assert [i for b in got for i in b["image_id"]] == list(index.frame.image_id)
    unpacked = list(index_batches(got))  # the data package unpacks its own keys
    assert unpacked[0].phrases == ["scratch", None]  # "" (collation) is no phrase again
    assert unpacked[0].cls == ["w", "w"] and unpacked[0].labels.tolist() == [0, 0]
    assert unpacked[0].image_ids == list(index.frame.image_id[:2])
    assert torch.equal(unpacked[0].images, got[0]["image"])
    assert unpacked[0].references is None and unpacked[0].has_reference is None
    workers = make_loader(ds, batch_size=5, num_workers=1, device="cpu")
    assert torch.equal(next(iter(workers))["image"][:2], got[0]["image"])
    assert workers.prefetch_factor == 4 and workers.persistent_workers is False
    assert workers.worker_init_fn is worker_init_fn and loader.worker_init_fn is None
    assert make_loader(ds, 2, 0, "cuda").pin_memory


def test_compile_flag_is_skipped_on_cpu(caplog) -> None:
    model = build_model(tiny_model_config("anomalyclip", vfm={"enabled": False})).eval()
    with caplog.at_level(logging.INFO, logger="hxpe.model.inference"):
        assert not maybe_compile(model, torch.device("cpu"))
        out = collect(infer_fast(model, batches(2, 2), compile=True))  # asks, and is told no
    skipped = "torch.compile skipped: only used on CUDA (device is cpu)."
    assert [r.message for r in caplog.records].count(skipped) == 2
    assert out.anomaly_maps.shape == (2, SIZE, SIZE)


def test_compile_on_cuda_compiles_the_towers_once(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """The CUDA branch, without a GPU: ``nn.Module.compile`` replaced by a recorder."""
    model = build_model(tiny_model_config("anomalyclip")).eval()
    calls: list[tuple[str, bool]] = []
    towers = {"visual": model.visual, "text": model.text.encoder, "dinov2": model.vfm.dinov2}
    for name, module in towers.items():
        monkeypatch.setattr(module, "compile", lambda dynamic, n=name: calls.append((n, dynamic)))
    cuda = torch.device("cuda")
    with caplog.at_level(logging.INFO):
        assert maybe_compile(model, cuda) and maybe_compile(model, cuda)
        assert not maybe_compile(torch.nn.Linear(2, 2), cuda)
    assert calls == [("visual", False), ("text", True), ("dinov2", False)]  # once, not twice
    assert [r.message for r in caplog.records if r.name == "hxpe.model.inference"] == [
        "torch.compile enabled for the CLIP vision/text towers and DINOv2.",
        "torch.compile skipped: Linear is not an HXPE model.",
    ]


@pytest.mark.parametrize(
    ("precision", "device", "expected"),
    [("bf16", "cpu", True), ("fp32", "cpu", False), ("auto", "cpu", False), ("auto", "cuda", True)],
)
def test_use_bf16_per_precision_and_device(precision: str, device: str, expected: bool) -> None:
    assert use_bf16(precision, torch.device(device)) is expected


def test_use_bf16_refuses_an_unknown_precision() -> None:
    with pytest.raises(ValueError, match=r"precision must be 'fp32', 'bf16' or 'auto'; got 'fp16'"):
        use_bf16("fp16", torch.device("cpu"))
