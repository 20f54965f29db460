"""The authors' losses and hybrid semantic fusion, pinned on hand-computed cases and small reference
implementations (AnomalyCLIP/AdaCLIP ``loss.py``, AdaCLIP ``HybridSemanticFusion``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hxpe.model.bases.adaclip import (
    SklearnKMeans,
    TorchKMeans,
    cluster_centre,
    hybrid_semantic_fusion,
)
from hxpe.model.bases.base import ModelOutput
from hxpe.model.config import ModelConfig, TrainConfig
from hxpe.model.losses import LossSpec, dice_loss, focal_loss, hxpe_loss
from hxpe.model.model import fuse_layers


def test_focal_loss_with_label_smoothing_hand_computed() -> None:
    # one-hot [1, 0] clamped to [1 - 1e-5, 1e-5]; pt = 0.9 (1 - 1e-5) + 0.1e-5 + 1e-5 = 0.900002
    pt = 0.9 * (1 - 1e-5) + 0.1 * 1e-5 + 1e-5
    expected = -((1 - pt) ** 2) * math.log(pt)
    got = focal_loss(torch.tensor([[0.9, 0.1]], dtype=torch.float64), torch.tensor([0]))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # without smoothing it is the plain focal loss
    plain = focal_loss(torch.tensor([[0.9, 0.1]], dtype=torch.float64), torch.tensor([0]), smooth=0)
    assert float(plain) == pytest.approx(-(0.1**2) * math.log(0.9), rel=1e-12)


def _reference_focal(
    logit: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5
) -> torch.Tensor:
    """loss.py FocalLoss (alpha None, gamma 2) written out step by step."""
    c = logit.shape[1]
    if logit.dim() > 2:
        logit = logit.view(logit.size(0), c, -1).permute(0, 2, 1).reshape(-1, c)
    idx = target.reshape(-1, 1).long()
    one_hot = torch.zeros(idx.shape[0], c, dtype=logit.dtype).scatter_(1, idx, 1)
    one_hot = torch.clamp(one_hot, smooth / (c - 1), 1.0 - smooth)
    pt = (one_hot * logit).sum(1) + smooth
    return (-1 * torch.pow(1 - pt, 2) * pt.log()).mean()


def test_focal_loss_on_maps_matches_the_reference() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 2, 5, 7, generator=g, dtype=torch.float64).softmax(dim=1)
    target = (torch.rand(2, 5, 7, generator=g) > 0.7).long()
    assert torch.allclose(focal_loss(probs, target), _reference_focal(probs, target), atol=1e-14)


def test_dice_loss_averages_over_the_first_dimension() -> None:
    pred = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # row 1: (2·0.5 + 1) / (1 + 1 + 1) = 2/3; row 2: (2 + 1) / 3 = 1  ->  1 − (2/3 + 1)/2 = 1/6
    assert float(dice_loss(pred, target)) == pytest.approx(1 / 6, rel=1e-6)


def _output(logits: list[torch.Tensor], image_logits: torch.Tensor) -> ModelOutput:
    b = image_logits.shape[0]
    return ModelOutput(
        image_score=image_logits.softmax(-1)[:, 1],
        anomaly_map=torch.zeros(b, 8, 8),
        layer_maps=[lg.softmax(1) for lg in logits],
        vfm_prompt=None,
        image_logits=image_logits,
        layer_logits=logits,
    )


@pytest.mark.parametrize("base", ["anomalyclip", "adaclip"])
def test_loss_terms_weights_and_image_loss_per_base(base: str) -> None:
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(2, 2, 4, 4, generator=g) * 3 for _ in range(3)]
    image_logits = torch.randn(2, 2, generator=g) * 4
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 2:6, 3:7] = 1
    labels = torch.tensor([1, 0])
    spec = LossSpec.resolve(ModelConfig(base=base), TrainConfig())
    losses = hxpe_loss(_output(logits, image_logits), masks, labels, spec)

    target = masks[:, 0]
    align = base == "adaclip"
    focal = dice = torch.zeros(())
    for lg in logits:
        if base == "adaclip":  # softmax of the upsampled logits (align_corners=True)
            p = F.interpolate(lg, size=(8, 8), mode="bilinear", align_corners=align).softmax(1)
        else:  # upsampled softmax (align_corners=False)
            p = F.interpolate(lg.softmax(1), size=(8, 8), mode="bilinear", align_corners=align)
        focal = focal + _reference_focal(p, target)
        dice = dice + dice_loss(p[:, 1], target) + dice_loss(p[:, 0], 1 - target)
    if base == "anomalyclip":
        image = F.cross_entropy(image_logits, labels)
        total = 4 * (focal + dice) + image  # train.py: lam = 4
    else:
        image = _reference_focal(image_logits.softmax(-1), labels)
        total = focal + dice + image  # trainer.py: all weights 1
    assert torch.allclose(losses["focal"], focal, atol=1e-6)
    assert torch.allclose(losses["dice"], dice, atol=1e-6)
    assert torch.allclose(losses["image"], image, atol=1e-6)
    assert torch.allclose(losses["total"], total, atol=1e-5)


@pytest.mark.parametrize("base", ["anomalyclip", "adaclip"])
def test_probability_maps_only_are_upsampled_with_the_base_alignment(base: str) -> None:
    """An output without ``layer_logits`` is trained on its ``layer_maps``, upsampled as the base
    does (align_corners: AdaCLIP True, AnomalyCLIP False)."""
    g = torch.Generator().manual_seed(2)
    logits = [torch.randn(1, 2, 3, 3, generator=g) * 3 for _ in range(2)]
    out = _output(logits, torch.zeros(1, 2))
    out.layer_logits = None
    masks = torch.zeros(1, 1, 7, 7)
    masks[0, 0, 1:4, 2:6] = 1
    spec = LossSpec.resolve(ModelConfig(base=base), TrainConfig())
    losses = hxpe_loss(out, masks, torch.tensor([1]), spec)
    align = base == "adaclip"
    target = masks[0, 0]
    dice = torch.zeros(())
    for lg in logits:
        p = F.interpolate(lg.softmax(1), size=(7, 7), mode="bilinear", align_corners=align)[0]
        dice = dice + dice_loss(p[1], target) + dice_loss(p[0], 1 - target)
    assert torch.allclose(losses["dice"], dice, atol=1e-6)


def test_single_image_dice_is_per_row_as_the_authors_squeeze() -> None:
    logits = [torch.zeros(1, 2, 2, 2)]
    logits[0][0, 1] = torch.tensor([[2.0, -2.0], [0.0, 0.0]])
    masks = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    spec = LossSpec.resolve(ModelConfig(base="anomalyclip"), TrainConfig())
    out = hxpe_loss(_output(logits, torch.zeros(1, 2)), masks, torch.tensor([1]), spec)
    p = logits[0].softmax(1)[0]  # [2, 2, 2], no upsampling (same size)
    t = masks[0, 0]

    def rows(pr: torch.Tensor, tg: torch.Tensor) -> torch.Tensor:
        dices = [
            (2 * (pr[r] * tg[r]).sum() + 1) / (pr[r].sum() + tg[r].sum() + 1) for r in range(2)
        ]
        return 1 - sum(dices) / 2

    expected = rows(p[1], t) + rows(p[0], 1 - t)
    assert float(out["dice"]) == pytest.approx(float(expected), rel=1e-6)


def test_layer_fusions() -> None:
    g = torch.Generator().manual_seed(2)
    logits = [torch.randn(1, 2, 3, 3, generator=g) for _ in range(2)]
    size = (6, 6)
    probs = [F.interpolate(lg.softmax(1), size=size, mode="bilinear") for lg in logits]
    per_layer = [(p[:, 1] + 1 - p[:, 0]) / 2 for p in probs]
    assert torch.allclose(
        fuse_layers(logits, size, "sum_probs", False), per_layer[0] + per_layer[1]
    )
    assert torch.allclose(
        fuse_layers(logits, size, "mean_probs", False), (per_layer[0] + per_layer[1]) / 2
    )
    up = [F.interpolate(lg, size=size, mode="bilinear", align_corners=True) for lg in logits]
    q = ((up[0] + up[1]) / 2).softmax(1)
    assert torch.allclose(
        fuse_layers(logits, size, "mean_logits", True), (q[:, 1] + 1 - q[:, 0]) / 2
    )


def _two_clusters() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """8 patches, 2 layers: patches 0-3 abnormal (logits favour class 1), 4-7 normal; the abnormal
    ones form two clear clusters (0,1) near e0 and (2,3) near e1."""
    base = torch.tensor(
        [
            [1, 0.1, 0],
            [1, -0.1, 0],
            [0.1, 1, 0],
            [-0.1, 1, 0],
            [0, 0, 1],
            [0, 0, 1],
            [0, 0, 1],
            [0, 0, 1],
        ]
    )
    layer_a = F.normalize(base, dim=-1)[None]
    layer_b = F.normalize(base + torch.tensor([0.0, 0.0, 0.2]), dim=-1)[None]
    abn = torch.tensor([3.0, 3.0, 3.0, 3.0, -3.0, -3.0, -3.0, -3.0])
    logit = torch.stack([-abn, abn])[None]  # [1, 2, 8]
    return [layer_a, layer_b], [logit, logit]


@pytest.mark.parametrize("fusion", ["sum_probs", "mean_probs"])
def test_probability_fusions_upsample_with_align_corners(fusion: str) -> None:
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(1, 2, 3, 3, generator=g) * 2 for _ in range(2)]
    probs = [
        F.interpolate(lg.softmax(1), size=(7, 7), mode="bilinear", align_corners=True)
        for lg in logits
    ]
    per_layer = [(p[:, 1] + 1 - p[:, 0]) / 2 for p in probs]
    expected = per_layer[0] + per_layer[1]
    expected = expected if fusion == "sum_probs" else expected / 2
    assert torch.allclose(fuse_layers(logits, (7, 7), fusion, True), expected, atol=1e-6)


@pytest.mark.parametrize("clusterer", [TorchKMeans(iters=5), SklearnKMeans(seed=111)])
def test_hsf_fuses_the_centre_of_the_abnormal_clusters(clusterer: object) -> None:
    patches, logits = _two_clusters()
    cls = F.normalize(torch.tensor([[0.0, 0.0, 1.0]]), dim=-1)
    fused = hybrid_semantic_fusion(
        patches, logits, cls, k=2, topk_factor=2, alpha=0.2, clusterer=clusterer
    ).feature
    # top 4 = patches 0..3; clusters {0,1}, {2,3}; centre = mean of the two clusters' means over layers
    chosen = [p[0, :4] for p in patches]
    c1 = torch.cat([c[:2] for c in chosen]).mean(0)
    c2 = torch.cat([c[2:] for c in chosen]).mean(0)
    centre = F.normalize((c1 + c2) / 2, dim=0)
    expected = F.normalize(0.2 * centre + 0.8 * cls[0], dim=0)
    assert torch.allclose(fused[0], expected, atol=1e-6)


def test_hsf_with_one_layer() -> None:
    """A single CLIP layer (``clip.layers: [n]``): the same formula on that layer's tokens."""
    patches, logits = _two_clusters()
    cls = F.normalize(torch.tensor([[0.0, 0.0, 1.0]]), dim=-1)
    fused = hybrid_semantic_fusion(
        patches[:1], logits[:1], cls, k=2, topk_factor=2, alpha=0.5, clusterer=TorchKMeans(5)
    ).feature
    chosen = patches[0][0, :4]
    centre = F.normalize((chosen[:2].mean(0) + chosen[2:].mean(0)) / 2, dim=0)
    assert torch.allclose(fused[0], F.normalize(0.5 * centre + 0.5 * cls[0], dim=0), atol=1e-6)


def test_cluster_centre_skips_empty_clusters() -> None:
    sel = [torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]])]
    labels = torch.tensor([[0, 0, 2]])  # cluster 1 empty
    assert torch.allclose(cluster_centre(sel, labels, 3), torch.tensor([[1.0, 1.0]]))


def test_sklearn_kmeans_draws_like_numpy_global_seed() -> None:
    """The authors call KMeans(random_state=None) after np.random.seed(111): each call draws from
    the global RNG. One seeded RandomState passed to every call gives the same labels."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    data = [rng.normal(size=(40, 6)).astype(np.float32) for _ in range(3)]
    np.random.seed(111)
    theirs = [KMeans(n_clusters=5, n_init="auto").fit_predict(d) for d in data]
    ours = SklearnKMeans(seed=111)
    got = [ours(torch.from_numpy(d)[None], 5)[0].numpy() for d in data]
    for a, b in zip(theirs, got, strict=True):
        assert np.array_equal(a, b)
    ours.reset()
    assert np.array_equal(ours(torch.from_numpy(data[0])[None], 5)[0].numpy(), theirs[0])


def test_sklearn_kmeans_per_image_draws_each_image_from_a_fresh_seeded_rng() -> None:
    """``per_image`` (``HXPEModel.same_rng_per_image``): every image draws from RandomState(seed),
    whatever ran before; the default draws the images from one stream."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    d = rng.normal(size=(40, 6)).astype(np.float32)
    x = torch.from_numpy(np.stack([d, d]))  # the same image twice in one batch
    fresh = KMeans(n_clusters=5, n_init="auto", random_state=np.random.RandomState(111))
    alone = fresh.fit_predict(d)
    stream = np.random.RandomState(111)
    first, second = (
        KMeans(n_clusters=5, n_init="auto", random_state=stream).fit_predict(d) for _ in range(2)
    )
    assert not np.array_equal(first, second)  # the data makes the draw visible in the labels

    ours = SklearnKMeans(seed=111)
    assert ours.per_image is False
    got = ours(x, 5).numpy()
    assert np.array_equal(got[0], first) and np.array_equal(got[1], second)
    ours.per_image = True
    for _ in range(2):  # the stream moved on, but each image still starts from the seed
        got = ours(x, 5).numpy()
        assert np.array_equal(got[0], alone) and np.array_equal(got[1], alone)
