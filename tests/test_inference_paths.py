"""Fast batched inference against the naive per-image path: equal outputs (1e-5, as the README
says), caches owned by the inference code, the loader."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hxpe.data.fixtures import IndexWriter
from hxpe.data.index import DatasetIndex
from hxpe.data.torch_dataset import IndexDataset
from hxpe.model.hxpe import build_model
from hxpe.model.inference import (
    PhraseCache,
    collect,
    enable_phrase_cache,
    infer_fast,
    infer_naive,
    make_loader,
    maybe_compile,
    phrase_cache_of,
)
from hxpe.model.tiny import tiny_model_config
from hxpe.model.vfm import ReferenceCache, unique_rows

SIZE = 112
PHRASES = ["crack", "crack", None, "small dark hole", "", "crack", None, "stain"]


def batches(n: int = 8, batch: int = 4, seed: int = 0, size: int = SIZE) -> list[dict]:
    """Collated-like batches: mixed phrases (None, "", repeats), two shared references."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 3, size, size, generator=g)
    refs = torch.rand(2, 3, size, size, generator=g)
    out = []
    for s in range(0, n, batch):
        idx = list(range(s, min(n, s + batch)))
        out.append(
            {
                "image": imgs[idx],
                "phrase": [PHRASES[i % len(PHRASES)] or "" for i in idx],
                "image_id": [f"img{i}" for i in idx],
                "cls": [f"c{i % 2}" for i in idx],
                "label": torch.tensor([i % 2 for i in idx]),
                "reference": refs[[i % 2 for i in idx]],
                "has_reference": torch.tensor([i % 3 != 2 for i in idx]),
            }
        )
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
    fast = collect(infer_fast(model, data, precision="fp32"))
    again = collect(infer_fast(model, data, precision="fp32"))  # served from the caches
    assert naive.image_ids == fast.image_ids == [f"img{i}" for i in range(8)]
    assert fast.anomaly_maps.shape == (8, SIZE, SIZE)
    for other in (fast, again):  # README: "agree within 1e-5 in fp32"
        assert np.abs(other.anomaly_maps - naive.anomaly_maps).max() < 1e-5
        assert np.abs(other.image_scores - naive.image_scores).max() < 1e-5
        if naive.vfm_prompts is not None:
            assert np.abs(other.vfm_prompts - naive.vfm_prompts).max() < 1e-5
    # the naive mode restored the model: a plain forward smooths on the device again
    with torch.no_grad():
        direct = model(data[0]["image"], [p or None for p in data[0]["phrase"]], None)
    assert model.cfg.sigma == tiny_model_config(base, **overrides).sigma
    assert direct.anomaly_map.shape == (4, SIZE, SIZE)


def test_phrase_cache_hits_and_is_invalidated_by_training() -> None:
    model = build_model(tiny_model_config("anomalyclip", vfm={"enabled": False})).eval()
    cache = enable_phrase_cache(model)
    assert isinstance(cache, PhraseCache) and phrase_cache_of(model) is cache
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


def test_phrase_cache_is_skipped_for_image_conditioned_text(caplog) -> None:
    model = build_model(tiny_model_config("adaclip", vfm={"enabled": False})).eval()
    with caplog.at_level(logging.INFO):
        assert enable_phrase_cache(model) is None
    assert "depend on the image" in caplog.text


def test_reference_dedup_and_cache() -> None:
    x = torch.rand(3, 3, 8, 8)
    stacked = x[[0, 1, 0, 2, 1]]
    reps, inverse = unique_rows(stacked)
    assert reps == [0, 1, 3] and inverse == [0, 1, 0, 2, 1]
    model = build_model(tiny_model_config("adaclip")).eval()
    model.vfm.reference_cache = ReferenceCache()
    refs = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.vfm.reference_features(refs[[0, 1, 0]], (8, 8))
        direct, _ = model.vfm.features(refs, (8, 8))
        feats2 = model.vfm.reference_features(refs[[1, 0]], (8, 8))
    assert torch.allclose(feats[0], direct[0], atol=1e-5)
    assert torch.allclose(feats[1], direct[1], atol=1e-5)
    assert torch.equal(feats[2], feats[0])
    assert model.vfm.reference_cache.hits == 2 and len(model.vfm.reference_cache) == 2
    assert torch.allclose(feats2[0], feats[1])


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
    workers = make_loader(ds, batch_size=5, num_workers=1, device="cpu")
    assert torch.equal(next(iter(workers))["image"][:2], got[0]["image"])
    assert make_loader(ds, 2, 0, "cuda").pin_memory


def test_compile_flag_is_skipped_on_cpu(caplog) -> None:
    model = build_model(tiny_model_config("winclip", vfm={"enabled": False})).eval()
    with caplog.at_level(logging.INFO):
        assert not maybe_compile(model, torch.device("cpu"))
        out = collect(infer_fast(model, batches(2, 2), compile=True))
    assert "torch.compile skipped" in caplog.text
    assert out.anomaly_maps.shape == (2, SIZE, SIZE)
