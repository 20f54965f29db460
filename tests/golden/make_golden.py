"""Golden outputs of the authors' AnomalyCLIP and AdaCLIP code on a small random CLIP.

Writes a folder in the format of ``../shared/golden/README.md`` (read by ``hxpe check-equivalence``):
a seeded random CLIP (``clip.json`` + ``clip.safetensors``, OpenAI key layout, fp16-exact),
synthetic ``inputs.safetensors``, the authors' parameters in their own checkpoint formats and
``expected*.safetensors`` computed by the authors' own classes, imported at run time from
``--authors-dir`` (AnomalyCLIP at 45ed4dd, AdaCLIP at e27ee32; this file contains none of their
code). Run it with an interpreter that has their dependencies (torch, torchvision, numpy, scipy,
scikit-learn, ftfy, regex, setuptools<70 for ``pkg_resources``, thop), CPU only::

    python tests/golden/make_golden.py --authors-dir AUTH --out DIR --seed 0 --image-size 224 --batch 2

``AUTH`` holds ``AnomalyCLIP/`` and ``AdaCLIP/`` (``AdaCLIP/method/bpe_simple_vocab_16e6.txt.gz``
replaced by AnomalyCLIP's identical file: it is a Git LFS pointer in their repository).
``--from DIR`` reuses DIR's CLIP, inputs and parameters (only the expected tensors are computed);
``--compare-to DIR`` prints every expected key's max abs difference to DIR's.

How each code base is driven (the README's procedure): AnomalyCLIP through ``build_model`` (the
non-JIT branch of ``AnomalyCLIP_lib.load``), ``AnomalyCLIP_PromptLearner`` loaded from the
``.pth``, ``DAPM_replace(20)``, then test.py:73-111 one image at a time and train.py:44-104 on the
whole batch (``label.long()`` on CPU). AdaCLIP through the unmodified ``AdaCLIP_Trainer``
(``evaluation`` over batch-1 items, ``train_one_batch`` per image from ``params.pth``), observed
by pass-through wrappers (``visual_text_similarity``, ``gaussian_filter``, the loss modules,
``optimizer.step``); ``cv2`` and ``tools`` (plots and metrics only) are stand-in modules, and during
training ``Tensor.norm`` reads an exact copy of its input (what CUDA autocast's fp32 cast does), so
the authors' in-place normalisations can be differentiated on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from hxpe.golden_clip import CLIP_SPEC, _fp16, random_clip, state_sha256

ANOMALYCLIP_COMMIT = "45ed4dd"
ADACLIP_COMMIT = "e27ee32"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HSF_SEEDS = (111, 112, 113, 114, 115)
FEATURES = [6, 12, 18, 24]
CLASS_NAME = "object"

ANOMALYCLIP_DESIGN = {
    "Prompt_length": 12,
    "learnabel_text_embedding_depth": 9,
    "learnabel_text_embedding_length": 4,
}


# ----------------------------------------------------------------------------- random CLIP


# ----------------------------------------------------------------------------- inputs


def synthetic_images(seed: int, size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images [B, S, S, 3] and bool defect masks [B, S, S].

    Each image: a smooth oriented texture, a coarse noise field, fine grain and 3 benign bright /
    dark blobs; every image but the last carries a dark elliptical stain. The mask is the support
    of the visible defect (pixels the stain changed after uint8 rounding)."""
    rng = np.random.default_rng(seed + 1000)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    images, masks = [], []
    for b in range(batch):
        theta, freq = rng.uniform(0, np.pi), rng.uniform(5, 11)
        wave = np.sin(
            2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 6.3)
        )
        tint = rng.uniform(0.35, 0.65, size=3)
        img = tint[None, None, :] + 0.08 * wave[..., None]
        coarse = torch.from_numpy(rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float32))
        coarse = torch.nn.functional.interpolate(coarse, (size, size), mode="bicubic")
        img = img + 0.05 * coarse[0].permute(1, 2, 0).numpy()
        img = img + rng.normal(0, 0.02, (size, size, 3))
        for _ in range(3):
            cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.03, 0.08)
            bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img = img + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.2) * bump[..., None]
        clean = np.clip(np.rint(np.clip(img, 0, 1) * 255), 0, 255).astype(np.uint8)
        if b < batch - 1:
            cy, cx = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
            a, c, phi = rng.uniform(0.08, 0.16), rng.uniform(0.04, 0.08), rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(phi) + (yy - cy) * np.sin(phi)
            w = -(xx - cx) * np.sin(phi) + (yy - cy) * np.cos(phi)
            inside = (u / a) ** 2 + (w / c) ** 2 <= 1.0
            stained = np.where(inside[..., None], np.clip(img, 0, 1) * 0.35, np.clip(img, 0, 1))
            defect = np.clip(np.rint(stained * 255), 0, 255).astype(np.uint8)
            mask = (defect != clean).any(-1)
        else:
            defect, mask = clean, np.zeros((size, size), dtype=bool)
        images.append(defect)
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def make_inputs(seed: int, size: int, batch: int) -> dict[str, torch.Tensor]:
    """``inputs.safetensors``: images (uint8 / 255, ToTensor arithmetic), labels, masks, and the
    authors' test preprocessing (``images_normalized``; filled by :func:`authors_preprocess`)."""
    rgb, masks = synthetic_images(seed, size, batch)
    images = torch.stack(
        [torch.from_numpy(im).permute(2, 0, 1).float().div(255) for im in rgb]
    ).contiguous()
    mask_t = torch.from_numpy(masks.astype(np.uint8))
    return {
        "images": images,
        "labels": mask_t.flatten(1).any(1).long(),
        "masks": mask_t,
    }


def uint8_images(images: torch.Tensor) -> list[Image.Image]:
    arr = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


# ----------------------------------------------------------------------------- authors' code


@contextlib.contextmanager
def authors_code(root: Path, stubs: dict[str, types.ModuleType] | None = None) -> Iterator[None]:
    """``root`` first on sys.path (and stand-in modules) while their modules are imported and run;
    afterwards their modules are forgotten (both code bases have ``loss``, ``utils``)."""
    sys.path.insert(0, str(root))
    for name, mod in (stubs or {}).items():
        sys.modules[name] = mod
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for name, mod in list(sys.modules.items()):
            where = getattr(mod, "__file__", None) or ""
            if name in (stubs or {}) or where.startswith(str(root) + os.sep):
                del sys.modules[name]


def _stub_modules() -> dict[str, types.ModuleType]:
    """Stand-ins for ``cv2`` and AdaCLIP's ``tools`` (trainer.py:1, 6: plots and metrics only)."""
    cv2 = types.ModuleType("cv2")
    tools = types.ModuleType("tools")
    tools.visualization = types.SimpleNamespace(plot_sample_cv2=lambda *a, **k: None)  # type: ignore[attr-defined]
    tools.calculate_metric = lambda results, obj: {}  # type: ignore[attr-defined]
    tools.calculate_average_metric = lambda metrics: {}  # type: ignore[attr-defined]
    return {"cv2": cv2, "tools": tools}


@contextlib.contextmanager
def norm_on_copy() -> Iterator[None]:
    """``Tensor.norm`` evaluated on an exact copy of its input (autocast's fp32 cast on CUDA)."""
    original = torch.Tensor.norm

    def norm(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return original(self.clone(), *args, **kwargs)

    torch.Tensor.norm = norm  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.norm = original  # type: ignore[method-assign]


class Tap(torch.nn.Module):
    """Pass-through wrapper of a loss module: returns exactly what the module returns."""

    def __init__(self, inner: torch.nn.Module, log: list[torch.Tensor]) -> None:
        super().__init__()
        self.inner = inner
        self.log = log

    def forward(self, *args: Any) -> torch.Tensor:
        out = self.inner(*args)
        self.log.append(out.detach().clone())
        return out


def authors_preprocess(authors: Path, pil: list[Image.Image], size: int) -> torch.Tensor:
    """The authors' test preprocessing: AnomalyCLIP ``utils.get_transform`` (AdaCLIP's
    ``AdaCLIP_Trainer.preprocess`` is checked against it in :func:`run_adaclip`)."""
    with authors_code(authors / "AnomalyCLIP"):
        import utils  # AnomalyCLIP/utils.py

        preprocess, _ = utils.get_transform(argparse.Namespace(image_size=size))
        return torch.stack([preprocess(im) for im in pil])


# ----------------------------------------------------------------------------- AnomalyCLIP


def run_anomalyclip(
    authors: Path,
    clip_sd: dict[str, torch.Tensor],
    inputs: dict[str, torch.Tensor],
    out: Path,
    seed: int,
    new_params: bool,
    steps: int = 0,
    step_params: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """AnomalyCLIP's expected tensors; writes ``prompt_learner.{pth,safetensors}`` if ``new_params``.
    With ``steps``, ``step_params`` receives the learner's parameters after each of ``steps``
    optimiser steps (train.py's Adam, lr 0.001, β (0.5, 0.999)) on the whole batch."""
    step_params = {} if step_params is None else step_params
    size = inputs["images"].shape[-1]
    with authors_code(authors / "AnomalyCLIP"):
        import AnomalyCLIP_lib
        from AnomalyCLIP_lib.model_load import build_model
        from loss import BinaryDiceLoss, FocalLoss
        from prompt_ensemble import AnomalyCLIP_PromptLearner
        from scipy.ndimage import gaussian_filter

        state = {k: v.float() for k, v in clip_sd.items()}
        model = build_model("golden-clip", state, ANOMALYCLIP_DESIGN).to("cpu").float()
        model.eval()
        ckpt = out / "anomalyclip" / "prompt_learner.pth"
        if new_params:
            learner = AnomalyCLIP_PromptLearner(model.to("cpu"), ANOMALYCLIP_DESIGN)
            g = torch.Generator().manual_seed(seed + 2000)
            with torch.no_grad():
                for name, p in learner.named_parameters():
                    std = 0.02 if name.startswith("compound_prompt_projections") else 0.05
                    p.copy_(_fp16(std * torch.randn(p.shape, generator=g)).float())
            torch.save({"prompt_learner": learner.state_dict()}, ckpt)  # train.py:114
            save_file(
                {
                    k: v.contiguous()
                    for k, v in learner.state_dict().items()
                    if not k.startswith("compound_prompt_projections")
                },
                str(ckpt.with_suffix(".safetensors")),
            )
        # test.py:66-71
        learner = AnomalyCLIP_PromptLearner(model.to("cpu"), ANOMALYCLIP_DESIGN)
        learner.load_state_dict(torch.load(ckpt)["prompt_learner"])
        model.visual.DAPM_replace(DPAM_layer=20)
        # test.py:73-76
        prompts, tokenized, compound = learner(cls_id=None)
        text_features = model.encode_text_learn(prompts, tokenized, compound).float()
        text_features = torch.stack(torch.chunk(text_features, dim=0, chunks=2), dim=1)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        rec: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("feat", "score", "map", "smooth", "layers")
        }
        for b in range(inputs["images_normalized"].shape[0]):  # test.py:80-111, batch 1
            image = inputs["images_normalized"][b : b + 1]
            with torch.no_grad():
                image_features, patch_features = model.encode_image(image, FEATURES, DPAM_layer=20)
                image_features = image_features / image_features.norm(dim=-1, keepdim=True)
                text_probs = image_features @ text_features.permute(0, 2, 1)
                text_probs = (text_probs / 0.07).softmax(-1)
                text_probs = text_probs[:, 0, 1]
                maps, layers = [], []
                for patch_feature in patch_features:
                    patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
                    similarity, _ = AnomalyCLIP_lib.compute_similarity(
                        patch_feature, text_features[0]
                    )
                    side = int((similarity.shape[1] - 1) ** 0.5)
                    layers.append(similarity[0, 1:, 1].reshape(side, side))
                    similarity_map = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], size)
                    maps.append((similarity_map[..., 1] + 1 - similarity_map[..., 0]) / 2.0)
                anomaly_map = torch.stack(maps).sum(dim=0)
                smoothed = torch.stack(
                    [
                        torch.from_numpy(gaussian_filter(i, sigma=4))
                        for i in anomaly_map.detach().cpu()
                    ]
                )
            rec["feat"].append(image_features)
            rec["score"].append(text_probs)
            rec["map"].append(anomaly_map)
            rec["smooth"].append(smoothed)
            rec["layers"].append(torch.stack(layers))
        expected = {
            "text_features": text_features[0].detach().clone(),
            "image_features": torch.cat(rec["feat"]),
            "image_score": torch.cat(rec["score"]),
            "anomaly_map": torch.cat(rec["map"]),
            "anomaly_map_smoothed": torch.cat(rec["smooth"]),
            "per_layer_maps": torch.stack(rec["layers"], dim=1),
        }
        # train.py:44-105, one batch of all B images
        optimizer = torch.optim.Adam(list(learner.parameters()), lr=0.001, betas=(0.5, 0.999))
        loss_focal, loss_dice, lam = FocalLoss(), BinaryDiceLoss(), 4
        model.eval()
        learner.train()
        image = inputs["images_normalized"]
        label = inputs["labels"]
        gt = inputs["masks"].float()[:, None].squeeze()
        gt[gt > 0.5] = 1
        gt[gt <= 0.5] = 0

        def train_step() -> tuple[Any, Any, Any, Any]:
            """train.py:48-104 on the whole batch: losses after backward."""
            with torch.no_grad():
                image_features, patch_features = model.encode_image(image, FEATURES, DPAM_layer=20)
                image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            prompts, tokenized, compound = learner(cls_id=None)
            text_features = model.encode_text_learn(prompts, tokenized, compound).float()
            text_features = torch.stack(torch.chunk(text_features, dim=0, chunks=2), dim=1)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            text_probs = image_features.unsqueeze(1) @ text_features.permute(0, 2, 1)
            text_probs = text_probs[:, 0, ...] / 0.07
            image_loss = torch.nn.functional.cross_entropy(text_probs.squeeze(), label.long())
            similarity_map_list = []
            for patch_feature in patch_features:
                patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
                similarity, _ = AnomalyCLIP_lib.compute_similarity(patch_feature, text_features[0])
                similarity_map = AnomalyCLIP_lib.get_similarity_map(
                    similarity[:, 1:, :], size
                ).permute(0, 3, 1, 2)
                similarity_map_list.append(similarity_map)
            loss: Any = 0
            focal: Any = 0
            dice: Any = 0
            for sm in similarity_map_list:
                f, d1, d0 = (
                    loss_focal(sm, gt),
                    loss_dice(sm[:, 1, :, :], gt),
                    loss_dice(sm[:, 0, :, :], 1 - gt),
                )
                loss += f
                loss += d1
                loss += d0
                focal = focal + f
                dice = dice + (d1 + d0)
            loss = lam * loss
            optimizer.zero_grad()
            (loss + image_loss).backward()
            return focal, dice, image_loss, loss

        focal, dice, image_loss, loss = train_step()
        expected |= {
            "loss_focal": focal.detach(),
            "loss_dice": dice.detach(),
            "loss_image": image_loss.detach(),
            "loss_total": (loss + image_loss).detach(),
        }
        for name, p in learner.named_parameters():
            if p.grad is not None:
                expected[f"grad.{name}"] = p.grad.detach().clone()
        optimizer.step()
        # train.py:100-105 repeated: the parameters after each of `steps` Adam steps on the batch
        for k in range(1, steps + 1):
            if k > 1:
                train_step()
                optimizer.step()
            for name, p in learner.named_parameters():
                if p.grad is not None:
                    step_params[f"step{k}.{name}"] = p.detach().clone()
    return expected


# ----------------------------------------------------------------------------- AdaCLIP


def _adaclip_params(trainer: Any, seed: int) -> None:
    """Static prompts N(0, 0.05^2); Linear weights N(0, 0.25 / fan_in), biases N(0, 0.02^2); fp16-exact."""
    g = torch.Generator().manual_seed(seed + 3000)
    with torch.no_grad():
        for name, p in trainer.named_parameters():
            if not any(u in name for u in trainer.learnable_paramter_list):
                continue
            if "static_prompts" in name:
                std = 0.05
            elif name.endswith(".weight"):
                std = 0.5 / math.sqrt(p.shape[1])
            else:
                std = 0.02
            p.copy_(_fp16(std * torch.randn(p.shape, generator=g)).float())


class AdaClipRun:
    """One ``AdaCLIP_Trainer`` on the random CLIP with pass-through recorders."""

    def __init__(self, method: Any, name: str, size: int) -> None:
        self.method = method
        self.trainer = method.AdaCLIP_Trainer(
            backbone=name,
            feat_list=FEATURES,
            input_dim=CLIP_SPEC["vision_cfg"]["width"],
            output_dim=CLIP_SPEC["embed_dim"],
            learning_rate=0.01,
            device="cpu",
            image_size=size,
            prompting_depth=4,
            prompting_length=5,
            prompting_branch="VL",
            prompting_type="SD",
            use_hsf=True,
            k_clusters=20,
        )
        self.similarity: list[dict[str, Any]] = []
        self.filtered: list[tuple[np.ndarray, np.ndarray]] = []
        self.focal: list[torch.Tensor] = []
        self.dice: list[torch.Tensor] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        clip_model = self.trainer.clip_model
        inner_vts = clip_model.visual_text_similarity

        def visual_text_similarity(image_feature, patch_token, text_feature, aggregation):  # noqa: ANN001, ANN202
            rec = {
                "cls": image_feature.detach().clone(),
                "patch": [p.detach().clone() for p in patch_token],
                "text": text_feature.detach().clone(),
            }
            result = inner_vts(image_feature, patch_token, text_feature, aggregation)
            rec["score"] = result[1].detach().clone()
            self.similarity.append(rec)
            return result

        clip_model.visual_text_similarity = visual_text_similarity
        inner_gf = method.trainer.gaussian_filter

        def gaussian_filter(x, *args, **kwargs):  # noqa: ANN001, ANN202
            y = inner_gf(x, *args, **kwargs)
            self.filtered.append((np.array(x, copy=True), np.array(y, copy=True)))
            return y

        method.trainer.gaussian_filter = gaussian_filter
        self.trainer.loss_focal = Tap(self.trainer.loss_focal, self.focal)
        self.trainer.loss_dice = Tap(self.trainer.loss_dice, self.dice)
        optimizer = self.trainer.optimizer
        inner_step = optimizer.step

        def step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.grads.append(
                {
                    f"grad.{n}": p.grad.detach().clone()
                    for n, p in self.trainer.named_parameters()
                    if p.grad is not None
                    and any(u in n for u in self.trainer.learnable_paramter_list)
                }
            )
            return inner_step(*args, **kwargs)

        optimizer.step = step

    def items(self, inputs: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """Batch-1 items as the authors' Dataset + DataLoader yield them."""
        return [
            {
                "img": inputs["images_normalized"][b : b + 1].clone(),
                "img_mask": inputs["masks"][b : b + 1, None].float(),
                "cls_name": [CLASS_NAME],
                "anomaly": inputs["labels"][b : b + 1].clone(),
                "img_path": [f"{b}.png"],
            }
            for b in range(inputs["images"].shape[0])
        ]

    def evaluate(self, inputs: dict[str, torch.Tensor], hsf: bool) -> list[dict[str, Any]]:
        self.trainer.clip_model.use_hsf = hsf
        self.similarity.clear()
        self.filtered.clear()
        self.trainer.evaluation(self.items(inputs), [CLASS_NAME], save_fig=False)
        return [
            {**s, "map": torch.from_numpy(f[0]), "smoothed": torch.from_numpy(f[1])}
            for s, f in zip(self.similarity, self.filtered, strict=True)
        ]

    def train_step(self, item: dict[str, Any], params: Path, hsf: bool) -> dict[str, torch.Tensor]:
        """``train_one_batch`` on one item, from ``params``: losses and gradients."""
        self.trainer.load(str(params))
        self.trainer.clip_model.train()
        self.trainer.clip_model.use_hsf = hsf
        self.focal.clear()
        self.dice.clear()
        self.grads.clear()
        item = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in item.items()}
        with norm_on_copy():
            total = self.trainer.train_one_batch(item)
        seg_focal = self.focal[1:]
        return {
            "loss_total": total.detach(),
            "loss_image": self.focal[0],
            "loss_focal": sum(seg_focal[1:], seg_focal[0]),
            "loss_dice": sum(self.dice[1:], self.dice[0]),
            **self.grads[0],
        }


def _forward_keys(run: AdaClipRun, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    recs = run.evaluate(inputs, hsf=False)
    layers = []
    for li in range(len(FEATURES)):
        per_image = []
        for r in recs:
            logits = 100.0 * r["patch"][li] @ r["text"]  # adaclip.py:513
            bsz, length, _ = logits.shape
            side = int(np.sqrt(length))
            per_image.append(logits.permute(0, 2, 1).view(bsz, 2, side, side))  # adaclip.py:533
        layers.append(torch.cat(per_image))
    out = {
        "text_features": torch.cat([r["text"].transpose(1, 2) for r in recs]),
        "cls_features": torch.cat([r["cls"] for r in recs]),
        "image_score": torch.cat([r["score"] for r in recs]),
        "anomaly_map": torch.stack([r["map"] for r in recs]),
        "anomaly_map_smoothed": torch.stack([r["smoothed"] for r in recs]),
        "per_layer_logits": torch.stack(layers),
    }
    seeds = []
    for s in HSF_SEEDS:
        np.random.seed(s)
        seeds.append(torch.cat([r["score"] for r in run.evaluate(inputs, hsf=True)]))
    table = torch.stack(seeds)
    out |= {
        "image_score_hsf": table[0].clone(),
        "image_score_hsf_seeds": table,
        "hsf_seed_spread": table.max(0).values - table.min(0).values,
    }
    return out


def _training_keys(
    run: AdaClipRun, inputs: dict[str, torch.Tensor], params: Path
) -> dict[str, torch.Tensor]:
    per: dict[str, list[torch.Tensor]] = {}
    for item in run.items(inputs):
        for k, v in run.train_step(item, params, hsf=False).items():
            per.setdefault(k, []).append(v)
        totals, images = [], []
        for s in HSF_SEEDS:
            np.random.seed(s)
            step = run.train_step(item, params, hsf=True)
            totals.append(step["loss_total"])
            images.append(step["loss_image"])
        for key, vals in (("loss_total_hsf", totals), ("loss_image_hsf", images)):
            t = torch.stack(vals)
            per.setdefault(key, []).append(t[0])
            per.setdefault(f"{key}_seed_spread", []).append(t.max() - t.min())
    return {k: torch.stack(v) for k, v in per.items()}


def _step_keys(
    run: AdaClipRun, inputs: dict[str, torch.Tensor], params: Path, steps: int
) -> dict[str, torch.Tensor]:
    """From ``params``: ``train_one_batch`` on items 0, 1, 0, ... (batch 1, HSF off) with a fresh
    AdamW state (trainer.py:87; ``optimizer.state`` cleared, as a new trainer starts); the learnable
    parameters after each step."""
    run.trainer.load(str(params))
    run.trainer.optimizer.state.clear()
    run.trainer.clip_model.train()
    run.trainer.clip_model.use_hsf = False
    items = run.items(inputs)
    out: dict[str, torch.Tensor] = {}
    for k in range(1, steps + 1):
        item = {
            key: v.clone() if isinstance(v, torch.Tensor) else v
            for key, v in items[(k - 1) % len(items)].items()
        }
        with norm_on_copy():
            run.trainer.train_one_batch(item)
        for n, p in run.trainer.named_parameters():
            if any(u in n for u in run.trainer.learnable_paramter_list):
                out[f"step{k}.{n}"] = p.detach().clone()
    return out


def run_adaclip(
    authors: Path,
    clip_sd: dict[str, torch.Tensor],
    inputs: dict[str, torch.Tensor],
    out: Path,
    seed: int,
    new_params: bool,
    steps: int = 0,
    files: Path | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """AdaCLIP's ``expected.safetensors`` (QuickGELU) and ``expected_gelu.safetensors`` (as released);
    with ``steps`` also ``steps.safetensors`` (:func:`_step_keys`), with ``files`` the tensors of
    AdaCLIP's dataset classes on those files (``files.safetensors``, :func:`adaclip_files`)."""
    size = inputs["images"].shape[-1]
    params = (out / "adaclip" / "params.pth").resolve()
    results: dict[str, dict[str, torch.Tensor]] = {}
    cwd = Path.cwd()
    work = Path(tempfile.mkdtemp(prefix="golden-adaclip-"))
    try:
        (work / "configs").mkdir()
        for file, quick in (("expected.safetensors", True), ("expected_gelu.safetensors", False)):
            name = "ViT-golden" if quick else "ViT-golden-gelu"
            spec = {k: v for k, v in CLIP_SPEC.items() if quick or k != "quick_gelu"}
            (work / "configs" / f"{name}.json").write_text(json.dumps(spec))
            # load_openai_model's os.path.isfile(name) branch (custom_clip.py:435): the model
            # name is a file in the working directory (create_model turns '/' into '-').
            torch.save({k: v.float() for k, v in clip_sd.items()}, work / name)
            os.chdir(work)
            try:
                with authors_code(authors / "AdaCLIP", _stub_modules()):
                    import method
                    import method.custom_clip

                    method.custom_clip.add_model_config(work / "configs")
                    run = AdaClipRun(method, name, size)
                    pil = uint8_images(inputs["images"])
                    theirs = torch.stack([run.trainer.preprocess(im) for im in pil])
                    if not torch.equal(theirs, inputs["images_normalized"]):
                        raise RuntimeError("AdaCLIP's preprocessing differs from AnomalyCLIP's")
                    if new_params and quick:
                        _adaclip_params(run.trainer, seed)
                        run.trainer.save(str(params))
                        save_file(
                            {k: v.contiguous() for k, v in run.trainer.save_dict.items()},
                            str(params.with_suffix(".safetensors")),
                        )
                    run.trainer.load(str(params))
                    result = _forward_keys(run, inputs)
                    if quick:
                        result |= _training_keys(run, inputs, params)
                        if steps:
                            results["steps.safetensors"] = _step_keys(run, inputs, params, steps)
                        if files is not None:
                            results["files.safetensors"] = adaclip_files(run, files)
                    results[file] = result
            finally:
                os.chdir(cwd)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


# ----------------------------------------------------------------------------- files on disk

FILES_CLASS, TILES_CLASS = "bottle", "carpet"  # names AnomalyCLIP's mvtec class table knows
MOSAIC_SEED = 7


def _scratches(rng: np.random.Generator, height: int, width: int, n: int = 14) -> np.ndarray:
    """Thin scratches (1 to 12 px wide; horizontal, vertical, diagonal) in an empty mask."""
    mask = np.zeros((height, width), bool)
    longest = min(400, height // 2, width // 2)
    for k in range(n):
        r, c = int(rng.integers(0, height - longest)), int(rng.integers(0, width - longest))
        length, thick = int(rng.integers(longest // 3, longest)), 1 + (k * 5) % 12
        if k % 3 == 0:
            mask[r : r + thick, c : c + length] = True
        elif k % 3 == 1:
            mask[r : r + length, c : c + thick] = True
        else:
            for t in range(length):
                mask[r + t, c + t : c + t + thick] = True
    return mask


def _smooth(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    """A smooth uint8 image (gradients and a low-frequency wave): small as PNG."""
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    planes = [
        0.5
        + 0.3 * np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(1, 3) * yy))
        + 0.15 * (xx - yy)
        for _ in range(channels)
    ]
    arr = np.clip(np.rint(np.stack(planes, -1) * 255), 0, 255).astype(np.uint8)
    return arr[..., 0] if channels == 1 else arr


def write_files(root: Path, seed: int) -> dict[str, Any]:
    """Image and mask files (sizes not multiples of 14, thin scratches, mask values 255 and 1) and
    mosaic tiles, with a ``meta.json`` in both authors' format; returns the cases."""
    rng = np.random.default_rng(seed + 4000)
    (root / FILES_CLASS).mkdir(parents=True, exist_ok=True)
    (root / TILES_CLASS).mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict[str, Any]]] = {FILES_CLASS: [], TILES_CLASS: []}

    def add(cls: str, stem: str, image: np.ndarray, mask: np.ndarray | None, value: int) -> None:
        img_path = f"{cls}/{stem}.png"
        Image.fromarray(image).save(root / img_path)
        mask_path = ""
        if mask is not None:
            mask_path = f"{cls}/{stem}_mask.png"
            Image.fromarray(mask.astype(np.uint8) * value, mode="L").save(root / mask_path)
        records[cls].append(
            {
                "img_path": img_path,
                "mask_path": mask_path,
                "cls_name": cls,
                "specie_name": "scratch" if mask is not None else "good",
                "anomaly": int(mask is not None),
            }
        )

    add(FILES_CLASS, "rgb_333x250", _smooth(rng, 250, 333, 3), None, 255)
    add(FILES_CLASS, "grey_150x97", _smooth(rng, 97, 150, 1), None, 255)
    for stem, (h, w), value in (
        ("scratch_1024", (1024, 1024), 255),
        ("scratch_1500x1000_value1", (1000, 1500), 1),
        ("scratch_1562", (1562, 1562), 255),
    ):
        add(FILES_CLASS, stem, _smooth(rng, h, w, 1), _scratches(rng, h, w), value)
    for i in range(5):
        tile = _smooth(rng, 90, 90, 3)
        mask = _scratches(rng, 90, 90, n=3) if i % 2 else None
        add(TILES_CLASS, f"tile{i}", tile, mask, 255)
    meta = {"train": records, "test": records}
    _write_json(root / "meta.json", meta)
    return {
        "images": ["rgb_333x250", "grey_150x97"],
        "masks": ["scratch_1024", "scratch_1500x1000_value1", "scratch_1562"],
        "tiles": [r["img_path"] for r in records[TILES_CLASS]],
    }


def _binary(gt: torch.Tensor) -> torch.Tensor:
    """test.py:85 / trainer.py:117-118: gt > 0.5 -> 1, else 0 (stored as uint8 [S, S])."""
    gt = gt.clone()
    gt[gt > 0.5], gt[gt <= 0.5] = 1, 0
    return gt.squeeze().to(torch.uint8)


def _file_keys(items: list[dict[str, Any]], cases: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for item in items:
        stem = Path(item["img_path"]).stem
        if stem in cases["images"]:
            out[f"image.{stem}"] = item["img"]
        if stem in cases["masks"]:
            out[f"mask.{stem}"] = _binary(item["img_mask"])
    return out


def anomalyclip_files(authors: Path, root: Path, size: int, cases: dict[str, Any]) -> dict:
    """AnomalyCLIP's ``Dataset`` (dataset.py:38-79) with ``utils.get_transform``: the test tensors of
    the files (images normalised, masks thresholded as test.py:85)."""
    with authors_code(authors / "AnomalyCLIP"):
        import dataset  # AnomalyCLIP/dataset.py
        import utils

        preprocess, target = utils.get_transform(argparse.Namespace(image_size=size))
        ds = dataset.Dataset(str(root), preprocess, target, "mvtec", mode="test")
        return _file_keys([ds[i] for i in range(len(ds))], cases)


def adaclip_files(run: AdaClipRun, root: Path, cases: dict[str, Any] | None = None) -> dict:
    """AdaCLIP's ``BaseDataset`` (dataset/base_dataset.py) with the trainer's transforms: the files'
    tensors (aug_rate 0), and one training item with aug_rate 1 after ``random.seed(MOSAIC_SEED)``:
    the 2x2 mosaic (:54-98), its tiles replayed from the same seed."""
    import random

    from dataset.base_dataset import BaseDataset  # AdaCLIP's, on sys.path inside run_adaclip

    cases = cases or json.loads((root / "cases.json").read_text())
    tr = run.trainer
    plain = BaseDataset([FILES_CLASS], tr.preprocess, tr.transform, str(root), 0.0, False)
    out = _file_keys([plain[i] for i in range(len(plain))], cases)
    mosaic = BaseDataset([TILES_CLASS], tr.preprocess, tr.transform, str(root), 1.0, True)
    random.seed(MOSAIC_SEED)
    item = mosaic[0]
    random.seed(MOSAIC_SEED)
    random.random()
    tiles = random.sample(range(len(mosaic.meta_info[TILES_CLASS])), 4)
    out |= {
        "mosaic.image": item["img"],
        "mosaic.mask": _binary(item["img_mask"]),
        "mosaic.tiles": torch.tensor(tiles),
        "mosaic.label": torch.tensor(item["anomaly"]),
    }
    return out


# ----------------------------------------------------------------------------- settings


def anomalyclip_settings(seed: int, size: int) -> dict[str, Any]:
    """``anomalyclip/settings.json``: every setting with the authors' file:line."""
    return {
        "code": {"repo": "https://github.com/zqhang/AnomalyCLIP", "commit": ANOMALYCLIP_COMMIT},
        "image_size": {
            "value": size,
            "source": "test.py:185 / train.py:133 --image_size (default 518, scripts 518)",
            "note": "native grid of the CLIP is 16x16 (224 px); other sizes use the in-place bilinear positional-embedding resize AnomalyCLIP.py:362-370 (align_corners=False)",
        },
        "features_list": {
            "value": FEATURES,
            "source": "test.py:184 / train.py:128 (argparse default; test.sh/train.sh pass --features_list 24)",
        },
        "feature_map_layer": {
            "value": [0, 1, 2, 3],
            "source": "test.py:189 / train.py:127; used test.py:98 / train.py:90 (idx >= 0: all four layers)",
        },
        "DPAM_layer": {
            "value": 20,
            "source": "test.py:71,90 / train.py:42,73 (hard-coded)",
            "note": "DAPM_replace(20) swaps the attention of the last 19 blocks for the v-v Attention (AnomalyCLIP.py:344-353); encode_image returns the v-v path tokens (AnomalyCLIP.py:284-296) and the CLS of the original path without ln_post (AnomalyCLIP.py:387)",
        },
        "n_ctx": {"value": 12, "source": "test.py:187 / train.py:125; prompt_ensemble.py:90"},
        "depth": {"value": 9, "source": "test.py:186 / train.py:124; prompt_ensemble.py:158-163"},
        "t_n_ctx": {"value": 4, "source": "test.py:188 / train.py:126; prompt_ensemble.py:93"},
        "sigma": {"value": 4, "source": "test.py:192, applied test.py:111 (scipy gaussian_filter)"},
        "temperature": {
            "value": 0.07,
            "source": "model_load.py:235 (patch softmax), test.py:94 (image score), train.py:83 (image loss)",
        },
        "image_score": {
            "formula": "softmax(<cls, t_normal>/0.07, <cls, t_abnormal>/0.07)[abnormal], cls = x_ori[CLS] @ visual.proj (no ln_post), L2-normalised",
            "source": "test.py:90-95; AnomalyCLIP.py:387",
        },
        "anomaly_map": {
            "formula": "sum over the 4 layers of (up(p_abn) + 1 - up(p_norm)) / 2, p = softmax(<patch, t>/0.07) on the patch grid, up = F.interpolate bilinear (align_corners=False) to S",
            "source": "test.py:97-109; model_load.py:222-235",
            "range": "[0, 4]",
        },
        "anomaly_map_smoothed": {
            "formula": "scipy.ndimage.gaussian_filter(anomaly_map[b], sigma=4) per image (float32 in, float32 out)",
            "source": "test.py:111",
        },
        "loss": {
            "formula": "loss_total = 4 * sum_l [focal_l(P_l, gt) + dice_l(P_l[:,1], gt) + dice_l(P_l[:,0], 1-gt)] + CE(<cls,t>/0.07, label); P_l = upsampled 2-class softmax map of layer l",
            "lam": 4,
            "source": "train.py:47-50, 82-104; loss.py:7-106 (FocalLoss gamma 2, smooth 1e-5, alpha None; BinaryDiceLoss smooth 1)",
            "batch": "all B images in one batch",
        },
        "optimizer": {
            "value": "Adam(prompt_learner.parameters(), lr=0.001, betas=(0.5, 0.999))",
            "source": "train.py:44, 131",
            "note": "gradients are recorded before optimizer.step()",
        },
        "prompt_templates": {
            "normal": "X X X X X X X X X X X X object.",
            "abnormal": "X X X X X X X X X X X X damaged object.",
            "source": "prompt_ensemble.py:88, 103-109, 156-157, 176-177 (12 'X' placeholders replaced by ctx_pos / ctx_neg)",
        },
        "deep_text_prompts": {
            "value": "compound_prompts_text[j] replaces tokens 1..4 at text block j+1 (j=0..7)",
            "source": "AnomalyCLIP.py:237-251 (cast .half() at :246)",
        },
        "checkpoint_format": {
            "value": "torch.save({'prompt_learner': prompt_learner.state_dict()}, path)",
            "source": "train.py:114; loaded test.py:67-68",
        },
        "model_build": {
            "value": "build_model(name, state_dict, design_details).to('cpu').float()",
            "source": "model_load.py:163-166 (AnomalyCLIP_lib.load non-JIT branch)",
        },
        "normalisation": {
            "value": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)},
            "source": "utils.py:14-23, AnomalyCLIP_lib/transform.py image_transform, constants.py",
        },
        "inference_batch": {
            "value": 1,
            "source": "test.py:48 (DataLoader batch_size=1)",
            "note": "with B > 1 test.py:93-95 would keep only image 0's score (text_features has batch 1), so the images are run one by one and stacked",
        },
        "training_batch": {
            "value": "all B images in one batch; gt = img_mask.squeeze() binarised at 0.5, label = labels",
            "source": "train.py:61-66, 84",
        },
        "cpu_edits": {
            "value": [
                "train.py:84 label.long().cuda() -> label.long()",
                "model_load.py:151-161: AnomalyCLIP_lib.load cannot read a local state-dict file (torch.jit.load consumes the open handle, the torch.load fallback then hits EOF); its non-JIT branch model_load.py:163-166 is called directly",
            ]
        },
        "seed": {"value": seed, "note": "parameters drawn with torch.Generator(seed + 2000)"},
    }


def adaclip_settings(seed: int, size: int) -> dict[str, Any]:
    """``adaclip/settings.json``: every setting with the authors' file:line."""
    return {
        "code": {"repo": "https://github.com/caoyunkang/AdaCLIP", "commit": ADACLIP_COMMIT},
        "image_size": {
            "value": size,
            "source": "train.py:159 / test.py:178 --image_size (default 518)",
            "note": "the 224-px positional embedding is resized at load time by clip_model.resize_pos_embed (bicubic, align_corners=False, clip_model.py:382-411) from custom_clip.create_model (custom_clip.py:636, 655: CLIP built with vision image_size = S)",
        },
        "features_list": {
            "value": FEATURES,
            "source": "train.py:47-49 / test.py:47-49 (layers // 4 multiples)",
        },
        "prompting_depth": {"value": 4, "source": "train.py:164 / test.py:181"},
        "prompting_length": {"value": 5, "source": "train.py:165 / test.py:182"},
        "prompting_type": {
            "value": "SD",
            "source": "train.py:166 / test.py:183 (static + dynamic)",
        },
        "prompting_branch": {
            "value": "VL",
            "source": "train.py:168 / test.py:185 (vision + language)",
        },
        "use_hsf": {
            "value": "True for image_score_hsf (release default, train.py:171 / test.py:188); False for image_score and the main training step"
        },
        "k_clusters": {
            "value": 20,
            "source": "train.py:173 / test.py:190; top-k tokens = 5 * k = 100 (adaclip.py:238), KMeans(n_clusters=20, n_init='auto') (adaclip.py:239)",
        },
        "input_dim_output_dim": {
            "value": [CLIP_SPEC["vision_cfg"]["width"], CLIP_SPEC["embed_dim"]],
            "source": "train.py:54-55 (vision width, embed_dim); text prompts use text_channel=embed_dim (adaclip.py:368), so text width must equal embed_dim",
        },
        "class_name": {
            "value": CLASS_NAME,
            "source": "text prompts adaclip.py:151-160, 210-230 (7 normal states x 4 templates, 5 abnormal states x 4 templates)",
        },
        "logit_scale": {
            "value": 100.0,
            "source": "adaclip.py:513 (patch logits), adaclip.py:525 (image score)",
        },
        "image_score": {
            "formula": "softmax(100 * <f, t_normal>, 100 * <f, t_abnormal>)[abnormal]; f = normalised cls_token_layer(CLS@proj after ln_post); with HSF: f = normalise(0.2 * kmeans_centroid_mean + 0.8 * f)",
            "source": "adaclip.py:477-488, 516-527, 540",
        },
        "anomaly_map": {
            "formula": "(q1 + 1 - q0) / 2, q = softmax over classes of mean_l up(logits_l); up = F.interpolate bilinear align_corners=True to S",
            "source": "adaclip.py:529-540, 576",
            "range": "[0, 1]",
        },
        "anomaly_map_smoothed": {
            "formula": "gaussian_filter(anomaly_map[b], sigma=4)",
            "source": "trainer.py:194",
        },
        "hsf_seed": {
            "value": HSF_SEEDS[0],
            "spread_seeds": list(HSF_SEEDS),
            "source": "sklearn KMeans(random_state=None) draws from numpy's global RNG; np.random.seed(s) is called right before each evaluation / training call (the scripts seed once with setup_seed(111), train.py:17 / test.py:21)",
        },
        "loss": {
            "formula": "loss_total = focal(score, label) + sum_l [focal(P_l, gt) + dice(P_l[:,1], gt) + dice(P_l[:,0], 1-gt)], all weights 1; P_l = softmax of the upsampled logits of layer l (aggregation=False)",
            "source": "trainer.py:103-141; adaclip.py:542-545; loss.py",
            "note": "batch size 1 (train.py:177-179): gt = img_mask.squeeze() is [S, S], so BinaryDiceLoss treats the S rows as the batch (trainer.py:115; loss.py dice N = targets.size()[0])",
        },
        "optimizer": {
            "value": "AdamW(learnable params, lr=0.01, betas=(0.5, 0.999))",
            "source": "trainer.py:87; train.py:156",
            "note": "gradients are recorded inside optimizer.step() before it runs",
        },
        "fp16_casts": {
            "value": "prompt tokens are cast .half() before being concatenated to the fp32 stream",
            "source": "adaclip.py:87, 118, 123",
        },
        "autocast": {
            "value": "@torch.cuda.amp.autocast() (adaclip.py:567, trainer.py:165) is inactive on CPU"
        },
        "activation": {
            "value": "expected.safetensors: QuickGELU (config with quick_gelu=true, = clip.json); expected_gelu.safetensors: nn.GELU as released (model_configs/*.json have no quick_gelu, clip_model.py:81,117)"
        },
        "checkpoint_format": {
            "value": "torch.save({name: tensor for learnable 'clip_model.*' entries of AdaCLIP_Trainer.state_dict()}, path)",
            "source": "trainer.py:69-76, 89-98; loaded trainer.py:100-101 (strict=False)",
        },
        "model_build": {
            "value": "custom_clip.create_model_and_transforms(name, S, pretrained='openai'): load_openai_model (local file) -> build_model_from_openai_state_dict (weights cast to fp16, lossless here) -> .float() -> CLIP(**model_cfg) + resize_pos_embed + strict load",
            "source": "custom_clip.py:398-464 (load_openai_model), 608-672 (create_model); clip_model.py:306-363; trainer.py:38-41",
        },
        "inference": {
            "value": "AdaCLIP_Trainer.evaluation over B batch-1 items (dicts as the authors' Dataset + DataLoader yield them: img [1,3,S,S], img_mask [1,1,S,S], cls_name ['object'], anomaly [1])",
            "source": "trainer.py:152-224; batch size 1: train.py:177-179, test.py:194-196",
        },
        "training": {
            "value": "one AdaCLIP_Trainer.train_one_batch per image, each from params.pth, clip_model.train()",
            "source": "trainer.py:103-150",
        },
        "cpu_workarounds": {
            "value": [
                "method/trainer.py:1,6 import cv2 and tools (OpenCV, seaborn, tensorboard; plots and metrics only): stand-in modules",
                "adaclip.py:223,225,482,486 in-place normalisation breaks fp32 backward without CUDA autocast: during training steps Tensor.norm is evaluated on an exact copy of its input (as autocast's fp32 cast does on CUDA); values unchanged",
                "method/bpe_simple_vocab_16e6.txt.gz is a Git LFS pointer in the repository: the identical OpenAI BPE file (sha256 924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a) is used",
                "create_model_and_transforms(name, S, pretrained='openai') resolves the random CLIP as a local file (custom_clip.py:435) whose name is a registered model config (custom_clip.add_model_config)",
            ]
        },
        "seed": {"value": seed, "note": "parameters drawn with torch.Generator(seed + 3000)"},
    }


# ----------------------------------------------------------------------------- folder


STEPS_SETTINGS: dict[str, dict[str, Any]] = {
    "anomalyclip": {
        "optimizer": {"value": "Adam", "source": "train.py:44"},
        "lr": {"value": 0.001, "source": "train.py:131"},
        "betas": {"value": [0.5, 0.999], "source": "train.py:44"},
        "weight_decay": {"value": 0.0, "source": "torch.optim.Adam default"},
        "batches": {
            "value": "the whole batch (all B images) at every step",
            "source": "train.py:48-105",
        },
        "features_list": {
            "value": FEATURES,
            "source": "train.py:128 default (recipe anomalyclip_paper)",
        },
        "keys": "step<k>.<prompt_learner key>: the parameter after step k (1-based)",
    },
    "adaclip": {
        "optimizer": {"value": "AdamW", "source": "method/trainer.py:87"},
        "lr": {"value": 0.01, "source": "train.py:156"},
        "betas": {"value": [0.5, 0.999], "source": "method/trainer.py:87"},
        "weight_decay": {"value": 0.01, "source": "torch.optim.AdamW default"},
        "batches": {
            "value": "batch 1: images 0, 1, 0, ... (HSF off)",
            "source": "train.py:157, 177-179",
        },
        "keys": "step<k>.<params.pth key>: the parameter after step k (1-based)",
    },
}


def files_settings(size: int) -> dict[str, Any]:
    return {
        "image_size": {"value": size, "source": "utils.py:14-23 / method/trainer.py:56-66"},
        "images": "image.<stem>: AnomalyCLIP Dataset (dataset.py:59-79) + get_transform, "
        "identical to AdaCLIP BaseDataset (dataset/base_dataset.py:100-139) + trainer transforms",
        "masks": "mask.<stem>: the same, then > 0.5 (test.py:85; trainer.py:117-118), uint8",
        "mosaic": {
            "value": "BaseDataset([carpet], aug_rate=1.0, training=True)[0] after "
            f"random.seed({MOSAIC_SEED}); mosaic.tiles = indices of the four meta.json records "
            "(random.sample replayed from the same seed); mosaic.label = the item's own anomaly",
            "source": "dataset/base_dataset.py:54-98, 104-108",
        },
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _readme(out: Path, seed: int, size: int, batch: int, source: str | None) -> str:
    import scipy
    import sklearn
    import torchvision

    sizes = "\n".join(
        f"| {p.relative_to(out).as_posix()} | {p.stat().st_size} |"
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "README.md"
    )
    origin = (
        f"CLIP, inputs and parameters copied from `{source}`"
        if source
        else "CLIP, inputs and parameters drawn by the generator"
    )
    return (
        "# Golden outputs: AnomalyCLIP and AdaCLIP on a random CLIP\n\n"
        f"Set parameters: seed {seed}, image size S = {size} (patch grid {size // 14} x {size // 14}; "
        f"positional embedding native 16 x 16), batch B = {batch}. {origin}.\n\n"
        "Format, keys, procedure and tolerances: as `shared/golden/README.md` (generator: "
        "`tests/golden/make_golden.py` of the hxpe repository, documented in `tests/golden/README.md`).\n\n"
        f"* AnomalyCLIP https://github.com/zqhang/AnomalyCLIP at `{ANOMALYCLIP_COMMIT}`; AdaCLIP "
        f"https://github.com/caoyunkang/AdaCLIP at `{ADACLIP_COMMIT}`.\n"
        f"* Python {platform.python_version()}, torch {torch.__version__} (CPU, float32, "
        f"{torch.get_num_threads()} threads), numpy {np.__version__}, scipy {scipy.__version__}, "
        f"scikit-learn {sklearn.__version__}, torchvision {torchvision.__version__}.\n\n"
        "| file | bytes |\n|---|---|\n" + sizes + "\n"
    )


def generate(args: argparse.Namespace) -> None:
    authors, out = Path(args.authors_dir).resolve(), Path(args.out)
    (out / "anomalyclip").mkdir(parents=True, exist_ok=True)
    (out / "adaclip").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the authors' constructors draw initial values (then replaced)
    source = Path(args.from_dir) if args.from_dir else None
    if source:
        for rel in (
            "clip.json",
            "clip.safetensors",
            "inputs.safetensors",
            "anomalyclip/prompt_learner.pth",
            "anomalyclip/prompt_learner.safetensors",
            "adaclip/params.pth",
            "adaclip/params.safetensors",
        ):
            shutil.copyfile(source / rel, out / rel)
        clip_sd = load_file(str(out / "clip.safetensors"))
        inputs = load_file(str(out / "inputs.safetensors"))
    else:
        _write_json(out / "clip.json", CLIP_SPEC)
        clip_sd = random_clip(args.seed)
        if args.clip_from_seed:  # hxpe.equivalence regenerates it (hxpe.golden_clip)
            _write_json(
                out / "clip_source.json",
                {
                    "generator": "hxpe.golden_clip.random_clip(seed, CLIP_SPEC)",
                    "seed": args.seed,
                    "sha256": state_sha256(clip_sd),
                },
            )
        else:
            save_file(
                clip_sd,
                str(out / "clip.safetensors"),
                metadata={
                    "dtype_note": "float16 storage; every value exact in float16 and float32"
                },
            )
        inputs = make_inputs(args.seed, args.image_size, args.batch)
        inputs["images_normalized"] = authors_preprocess(
            authors, uint8_images(inputs["images"]), args.image_size
        )
        save_file(inputs, str(out / "inputs.safetensors"))
    size, batch = inputs["images"].shape[-1], inputs["images"].shape[0]
    _write_json(out / "anomalyclip" / "settings.json", anomalyclip_settings(args.seed, size))
    _write_json(out / "adaclip" / "settings.json", adaclip_settings(args.seed, size))
    new = source is None
    files = out / "files" if args.files else None
    if files is not None:
        cases = write_files(files, args.seed)
        _write_json(files / "cases.json", cases)
        theirs = anomalyclip_files(authors, files.resolve(), size, cases)
    if "anomalyclip" in args.bases:
        steps: dict[str, torch.Tensor] = {}
        expected = run_anomalyclip(authors, clip_sd, inputs, out, args.seed, new, args.steps, steps)
        save_file(_contiguous(expected), str(out / "anomalyclip" / "expected.safetensors"))
        print(f"anomalyclip: {len(expected)} keys")
        if steps:
            save_file(_contiguous(steps), str(out / "anomalyclip" / "steps.safetensors"))
            _write_json(out / "anomalyclip" / "steps.json", STEPS_SETTINGS["anomalyclip"])
    if "adaclip" in args.bases:
        runs = run_adaclip(
            authors,
            clip_sd,
            inputs,
            out,
            args.seed,
            new,
            args.steps,
            files.resolve() if files is not None else None,
        )
        ada_files = runs.pop("files.safetensors", None)
        for file, expected in runs.items():
            save_file(_contiguous(expected), str(out / "adaclip" / file))
            print(f"adaclip {file}: {len(expected)} keys")
        if args.steps:
            _write_json(out / "adaclip" / "steps.json", STEPS_SETTINGS["adaclip"])
        if files is not None and ada_files is not None:
            for key, value in theirs.items():  # both authors read the files alike
                if not torch.equal(value, ada_files[key]):
                    raise RuntimeError(f"{key}: AdaCLIP's dataset differs from AnomalyCLIP's")
            record = theirs | {k: v for k, v in ada_files.items() if k.startswith("mosaic.")}
            save_file(
                {k: v.detach().contiguous() for k, v in record.items()},
                str(files / "expected.safetensors"),
            )
            _write_json(files / "settings.json", files_settings(size))
            print(f"files: {len(record)} keys")
    (out / "README.md").write_text(_readme(out, args.seed, size, batch, args.from_dir))


def _contiguous(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().contiguous() for k, v in d.items()}


def compare(ours: Path, theirs: Path) -> list[tuple[str, str, float]]:
    """(file, key, max abs diff) for every expected key of ``theirs``; inf when missing or reshaped."""
    rows = []
    for path in sorted(theirs.glob("*/expected*.safetensors")):
        rel = path.relative_to(theirs)
        mine = load_file(str(ours / rel)) if (ours / rel).is_file() else {}
        for key, ref in sorted(load_file(str(path)).items()):
            got = mine.get(key)
            if got is None or got.shape != ref.shape:
                rows.append((str(rel), key, math.inf))
            else:
                diff = (got.double() - ref.double()).abs()
                rows.append((str(rel), key, float(diff.max()) if diff.numel() else 0.0))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors-dir", required=True, help="Folder with AnomalyCLIP/ and AdaCLIP/.")
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2).")
    p.add_argument(
        "--from",
        dest="from_dir",
        help="Reuse this golden folder's CLIP, inputs and parameters (image size and batch from "
        "its inputs); only settings and expected tensors are computed.",
    )
    p.add_argument(
        "--bases",
        nargs="+",
        default=["anomalyclip", "adaclip"],
        choices=["anomalyclip", "adaclip"],
        help="Compute these bases' expected tensors (default both).",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=3,
        help="Record the parameters after this many optimiser steps per base (default 3; 0: none).",
    )
    p.add_argument(
        "--files",
        action="store_true",
        help="Also write image and mask files (files/) and the authors' dataset tensors of them.",
    )
    p.add_argument(
        "--clip-from-seed",
        action="store_true",
        help="Write clip_source.json (seed, sha256) instead of the 17 MB clip.safetensors; "
        "hxpe check-equivalence regenerates the CLIP (the committed tests/golden/records).",
    )
    p.add_argument(
        "--compare-to",
        help="After generating, print every expected key's max abs difference to this folder.",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    generate(args)
    if args.compare_to:
        rows = compare(Path(args.out), Path(args.compare_to))
        for file, key, diff in rows:
            print(f"{file:<36} {key:<58} {diff:.3e}")
        print(f"max over {len(rows)} keys: {max(d for _, _, d in rows):.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
