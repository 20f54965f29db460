"""The equations of notebook 04's walk-through, written out plainly and checked against the model.

Each ``check_*`` function recomputes one quantity from a forward pass's intermediates
(``model(..., trace=True)``: :class:`hxpe.model.bases.base.ForwardTrace`) with the equation the notebook
prints, independently of the model's own code (plain torch, and SciPy for the smoothing), and
asserts that it equals what the model returned. A model or config that drifts from the notebook's
equations therefore fails notebook 04, hence ``make test``. The recomputations are references, not
model code: nothing here is called by the model.

Example (the tiny model of the tests; every check passes on the model as it is):
    >>> from hxpe.model.model import build_model
    >>> from hxpe.model.tiny import tiny_model_config
    >>> model = build_model(tiny_model_config("adaclip")).eval()
    >>> images = torch.rand(2, 3, 96, 96)
    >>> with torch.no_grad():
    ...     out = model(images, ["small dark scratch", None], references=images.flip(0), trace=True)
    >>> check_layer_logits(out, model.cfg.arithmetic.temperature).passed
    True
    >>> check_vfm_prompt(out, model.cfg.vfm).name
    'DINOv2 prompt map M'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

RTOL = 1e-4
ATOL = 1e-5


class EquationMismatch(AssertionError):
    """The model returned something other than what the notebook's equation computes."""


@dataclass(frozen=True)
class Check:
    """One equation checked: its name, the largest deviation and the tolerance it met."""

    name: str
    max_abs_diff: float
    tolerance: float
    passed: bool = True

    def __str__(self) -> str:
        return (
            f"OK  {self.name}: recomputed from the equation = returned by the model "
            f"(max |Δ| {self.max_abs_diff:.2e} ≤ {self.tolerance:.1e})"
        )

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))


def assert_same(
    name: str, recomputed: torch.Tensor, returned: torch.Tensor, rtol: float = RTOL
) -> Check:
    """A passed :class:`Check` when ``recomputed`` equals ``returned`` within ``ATOL + rtol·|x|``;
    else :class:`EquationMismatch` naming the equation and the deviation."""
    a = torch.as_tensor(recomputed).detach().double().cpu()
    b = torch.as_tensor(returned).detach().double().cpu()
    if a.shape != b.shape:
        raise EquationMismatch(
            f"{name}: the equation gives shape {tuple(a.shape)}, the model returned "
            f"{tuple(b.shape)}; notebook 04 no longer describes the model that runs."
        )
    diff = (a - b).abs()
    tol = ATOL + rtol * b.abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if bool((diff > tol).any()):
        raise EquationMismatch(
            f"{name}: the model's value differs from the notebook's equation by up to "
            f"{worst:.3g} (tolerance {ATOL:g} + {rtol:g}·|value|) at "
            f"{int((diff > tol).sum())} of {diff.numel()} entries. Either the model changed "
            f"(fix it, or update the equation in notebook 04 and hxpe/equations.py) or the "
            f"config no longer matches the equation shown."
        )
    return Check(name, worst, float(tol.max()) if tol.numel() else ATOL)


def _trace(out: Any) -> Any:
    if getattr(out, "trace", None) is None:
        raise ValueError("the model output has no trace: call the model with trace=True")
    return out.trace


def _up(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinear upsampling ``up(·)`` of [B, C, h, w]."""
    return F.interpolate(x.double(), size=size, mode="bilinear", align_corners=align_corners)


# ------------------------------------------------------------------------------ the map


def check_layer_logits(out: Any, temperature: float) -> Check:
    """``z^l_{ij,c} = <f^l_ij, t_c> / τ`` for every selected layer l, patch ij and class c."""
    trace = _trace(out)
    text = out.text_features.double()
    checks = []
    for layer, (tokens, logits) in enumerate(
        zip(trace.patch_tokens, out.layer_logits, strict=True)
    ):
        z = torch.einsum("bnd,bcd->bcn", tokens.double(), text) / temperature
        checks.append(
            assert_same(
                f"per-layer logits z^l (layer {layer + 1} of {len(out.layer_logits)})",
                z.reshape(logits.shape),
                logits,
            )
        )
    return Check(
        f"per-layer logits z^l = <f^l, t>/τ ({len(checks)} layers)",
        max(c.max_abs_diff for c in checks),
        max(c.tolerance for c in checks),
    )


def fused_map(
    layer_logits: list[torch.Tensor], size: tuple[int, int], fusion: str, align_corners: bool
) -> torch.Tensor:
    """The fused map ``A`` [B, H, W] of the base's layer fusion (before any smoothing):

    * ``mean_logits``: ``q = softmax_c( (1/L) Σ_l up(z^l) )``, ``A = (q_a + 1 − q_n) / 2``;
    * ``mean_probs``: ``A = (1/L) Σ_l (up(p^l_a) + 1 − up(p^l_n)) / 2``, ``p^l = softmax_c(z^l)``;
    * ``sum_probs``: the same summed over the L layers (range [0, L]).
    """
    if fusion == "mean_logits":
        q = torch.stack([_up(z, size, align_corners) for z in layer_logits]).mean(0).softmax(1)
        return (q[:, 1] + 1.0 - q[:, 0]) / 2.0
    per = [_up(z.double().softmax(1), size, align_corners) for z in layer_logits]
    a = torch.stack([(p[:, 1] + 1.0 - p[:, 0]) / 2.0 for p in per])
    if fusion == "sum_probs":
        return a.sum(0)
    if fusion == "mean_probs":
        return a.mean(0)
    raise ValueError(f"unknown layer fusion {fusion!r}: mean_logits, mean_probs or sum_probs")


def check_fused_map(out: Any, arithmetic: Any, vfm: Any) -> Check:
    """The fused map before smoothing, and in ``vfm.mode: reweight`` its reweighting
    ``A' = A · (1 + α up(M)) / (1 + α)``."""
    trace = _trace(out)
    size = tuple(trace.fused.shape[-2:])
    a = fused_map(out.layer_logits, size, arithmetic.layer_fusion, arithmetic.align_corners)
    assert_same(f"fused map A ({arithmetic.layer_fusion})", a, trace.layer_fused)
    if out.vfm_prompt is not None and vfm.mode == "reweight":
        m = _up(out.vfm_prompt[:, None], size, False)[:, 0]
        a = a * (1.0 + vfm.alpha * m) / (1.0 + vfm.alpha)
    check = assert_same("fused map before smoothing", a, trace.fused)
    return Check(f"fused map A ({arithmetic.layer_fusion})", check.max_abs_diff, check.tolerance)


def check_smoothing(out: Any) -> Check:
    """``anomaly_map = G_σ * A``: SciPy's ``gaussian_filter`` (reflect, truncate 4) of the fused
    map, image by image."""
    from scipy.ndimage import gaussian_filter

    trace = _trace(out)
    fused = trace.fused.detach().double().cpu().numpy()
    if trace.sigma > 0:
        smoothed = np.stack([gaussian_filter(m, trace.sigma, mode="reflect") for m in fused])
    else:
        smoothed = fused
    check = assert_same("smoothed map", torch.from_numpy(smoothed), out.anomaly_map)
    return Check(f"smoothed map G_σ * A (σ = {trace.sigma:g})", check.max_abs_diff, check.tolerance)


# ------------------------------------------------------------------------------ DINOv2 prompt


def check_vfm_distance(out: Any, vfm: Any) -> Check:
    """With a reference: ``d_p = 1 − max_q <f_p, g_q>`` (+ the mutual gap
    ``max_{p'} <f_{p'}, g_{q*}> − <f_p, g_{q*}>`` in mode ``mutual_nn``)."""
    steps = _trace(out).vfm
    if steps is None or steps.reference_features is None:
        raise ValueError("this pass has no DINOv2 reference distance (no DINOv2 or no reference)")
    has = steps.has_reference
    f, g = steps.features[has].double(), steps.reference_features[has].double()
    sim = f @ g.transpose(1, 2)
    best, match = sim.max(dim=2)
    d = 1.0 - best
    if vfm.distance == "mutual_nn":
        d = d + sim.max(dim=1).values.gather(1, match) - best
    check = assert_same("distance to the reference d", d, steps.distance[has])
    return Check(
        f"distance to the reference d ({vfm.distance})", check.max_abs_diff, check.tolerance
    )


def check_vfm_prompt(out: Any, vfm: Any) -> Check:
    """``M = ê · ((1 − γ) + γ ŝ)`` with ``ê = e / (1 + e)``, ``e = max(d / s − 1, 0)`` and ``ŝ`` the
    min-max normalised CLS salience."""
    steps = _trace(out).vfm
    if steps is None:
        raise ValueError("this pass has no DINOv2 prompt (model.vfm.enabled is false)")
    d, s = steps.distance.double(), steps.scale.double()[:, None]
    e = (d / s - 1.0).clamp_min(0.0)
    sal = steps.salience.double()
    lo, hi = sal.min(1, keepdim=True).values, sal.max(1, keepdim=True).values
    s_hat = (sal - lo) / (hi - lo + 1e-8)
    gamma = vfm.salience_weight
    m = e / (1.0 + e) * ((1.0 - gamma) + gamma * s_hat)
    check = assert_same("DINOv2 prompt map M", m.reshape(out.vfm_prompt.shape), out.vfm_prompt)
    return Check("DINOv2 prompt map M", check.max_abs_diff, check.tolerance)


def check_key_bias(out: Any, vfm: Any, beta: float) -> Check:
    """``B = β · M`` over the patch keys, added to every query's attention logits in the last
    ``vfm.bias_last_n`` blocks: ``softmax(QKᵀ/√d + B) V``."""
    trace = _trace(out)
    if trace.key_bias is None:
        raise ValueError(f"this pass adds no key bias (vfm.mode is {vfm.mode!r})")
    check = assert_same("key bias β·M", beta * out.vfm_prompt.flatten(1), trace.key_bias)
    return Check(
        f"key bias β·M (β = {beta:g}, blocks {list(trace.bias_blocks)})",
        check.max_abs_diff,
        check.tolerance,
    )


# ------------------------------------------------------------------------------ image score


HSF_TIE_TOLERANCE = 1e-6  # float32 rounding of the abnormal probabilities in the model's pass


def check_hsf(out: Any, adaclip: Any) -> Check:
    """Hybrid semantic fusion: the m = k·factor patches of highest ``softmax((1/L) Σ_l z^l)_a``,
    their k-means clusters C_j; ``c = norm( mean_j (1/(L|C_j|)) Σ_l Σ_{p∈C_j} f^l_p )`` and
    ``f = norm(α c + (1 − α) f_cls)``."""
    trace = _trace(out)
    hsf = trace.score_parts
    if hsf is None:
        raise ValueError("this pass's image score does not use HSF (it uses the CLS feature)")
    flat = [z.double().flatten(2) for z in out.layer_logits]
    abnormal = torch.stack(flat).mean(0).softmax(1)[:, 1]
    m = hsf.top.shape[1]
    # the model's m patches are the m most abnormal ones: none left out scores above the lowest
    # chosen one (up to float32 rounding, which may order near-ties differently)
    chosen = torch.zeros_like(abnormal, dtype=torch.bool)
    chosen.scatter_(1, hsf.top.to(abnormal.device), True)
    lowest_chosen = abnormal.masked_fill(~chosen, float("inf")).min(1).values
    highest_left = abnormal.masked_fill(chosen, float("-inf")).max(1).values
    if chosen.sum(1).ne(m).any() or (highest_left > lowest_chosen + HSF_TIE_TOLERANCE).any():
        raise EquationMismatch(
            "HSF patch selection: the model clustered other patches than the m most abnormal ones "
            "of softmax of the layer-mean logits; notebook 04 no longer describes the model."
        )
    feats = []
    for b in range(out.image_features.shape[0]):
        centres = []
        for j in range(hsf.k):
            members = hsf.top[b][hsf.labels[b] == j]
            if len(members):
                tokens = torch.stack([p[b, members].double() for p in trace.patch_tokens])
                centres.append(tokens.mean(dim=(0, 1)))
        c = F.normalize(torch.stack(centres).mean(0), dim=0)
        cls = out.image_features[b].double()
        feats.append(F.normalize(adaclip.hsf_alpha * c + (1.0 - adaclip.hsf_alpha) * cls, dim=0))
    check = assert_same("HSF image feature f", torch.stack(feats), trace.score_feature)
    return Check(
        f"HSF image feature f (k = {hsf.k}, m = {m}, α = {adaclip.hsf_alpha:g})",
        check.max_abs_diff,
        check.tolerance,
    )


def check_image_score(
    out: Any, temperature: float, score_mode: str = "base", top: float = 1.0
) -> Check:
    """``z = <f, t_c> / τ`` and the image score ``softmax_c(z)_a``; with ``score_mode`` 'text_max'
    its mean with the smoothed map's maximum over its range ``top`` (clipped to [0, 1])."""
    trace = _trace(out)
    z = torch.einsum("bd,bcd->bc", trace.score_feature.double(), out.text_features.double())
    z = z / temperature
    assert_same("image logits z", z, out.image_logits)
    score = z.softmax(-1)[:, 1]
    name = "image score softmax(<f, t>/τ)_a"
    if score_mode == "text_max":
        peak = (out.anomaly_map.double().flatten(1).amax(dim=1) / top).clamp(0, 1)
        score = (score + peak) / 2
        name = f"image score (softmax(<f, t>/τ)_a + min(1, max A / {top:g})) / 2"
    check = assert_same("image score", score, out.image_score)
    return Check(name, check.max_abs_diff, check.tolerance)


# ------------------------------------------------------------------------------ the loss


def focal(p: torch.Tensor, target: torch.Tensor, gamma: float, smooth: float) -> torch.Tensor:
    """``mean −(1 − p_t)^γ log p_t`` over rows of ``p`` [n, C] with ``p_t`` the smoothed one-hot
    target's probability plus ``smooth``."""
    c = p.shape[1]
    onehot = F.one_hot(target.long(), c).double().clamp(smooth / (c - 1), 1.0 - smooth)
    pt = (onehot * p).sum(1) + smooth
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


def dice(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``1 − mean_b (2 Σ p m + 1) / (Σ p + Σ m + 1)`` over the images b."""
    p, m = p.flatten(1), m.flatten(1)
    return 1.0 - ((2.0 * (p * m).sum(1) + 1.0) / (p.sum(1) + m.sum(1) + 1.0)).mean()


def check_loss(out: Any, masks: torch.Tensor, labels: torch.Tensor, terms: dict, spec: Any) -> list:
    """Each loss term of a batch of at least two images: per layer focal on the (normal, abnormal)
    probabilities at the mask's size and Dice on both channels, the image loss (focal on
    ``softmax(z)`` or cross-entropy of ``z``), and the weighted total."""
    if masks.shape[0] < 2:
        raise ValueError("check the loss on a batch of at least two images")
    m = (masks.reshape(masks.shape[0], *masks.shape[-2:]) > 0.5).double()
    size = tuple(m.shape[-2:])
    if spec.fusion == "mean_logits":
        probs = [_up(z, size, spec.align_corners).softmax(1) for z in out.layer_logits]
    else:
        probs = [_up(z.double().softmax(1), size, spec.align_corners) for z in out.layer_logits]
    target = m.flatten().long()
    f = sum(focal(p.movedim(1, -1).reshape(-1, 2), target, spec.gamma, spec.smooth) for p in probs)
    d = sum(dice(p[:, 1], m) + dice(p[:, 0], 1.0 - m) for p in probs)
    y = (labels.reshape(-1).double() > 0.5).long()
    z = out.image_logits.double()
    if spec.image_loss == "focal":
        image = focal(z.softmax(-1), y, spec.gamma, spec.smooth)
        image_name = "image loss Focal(softmax(z), y)"
    else:
        image = F.cross_entropy(z, y)
        image_name = "image loss CE(z, y)"
    w = spec.weights
    total = w["focal"] * f + w["dice"] * d + w["image"] * image
    return [
        assert_same("focal Σ_l Focal(p^l, m)", f, terms["focal"]),
        assert_same("dice Σ_l Dice(p^l_a, m) + Dice(p^l_n, 1 − m)", d, terms["dice"]),
        assert_same(image_name, image, terms["image"]),
        assert_same(
            f"total {w['focal']:g}·focal + {w['dice']:g}·dice + {w['image']:g}·image",
            total,
            terms["total"],
        ),
    ]


# ------------------------------------------------------------------------------ the choices

# The equation of every option of the settings the notebooks' equations depend on, keyed by the
# setting's config key and the option; `choice_markdown` renders the active one and names the others.
CHOICES: dict[str, dict[str, str]] = {
    "text_layout": {
        "overwrite": r"\text{block 1: } [\mathrm{SOT}]\,[C]\,w_1 \dots w_n\,[\mathrm{EOT}];"
        r"\quad \text{blocks } 2..D\text{: } [\mathrm{SOT}]\,[D^{b}_1..D^{b}_p]\,"
        r"(\text{the first } p \text{ tokens after SOT overwritten})\dots[\mathrm{EOT}]",
        "slots": r"[\mathrm{SOT}]\,[D^{b}_1..D^{b}_p]\,[C]\,w_1 \dots w_n\,[\mathrm{EOT}]"
        r"\quad (\text{dedicated slots, replaced at the input of blocks } 1..D)",
    },
    "layer_fusion": {
        "mean_logits": r"A = \tfrac12\big(q_a + 1 - q_n\big), \quad "
        r"q = \mathrm{softmax}_c\Big(\tfrac1L \textstyle\sum_l \mathrm{up}(z^l)\Big)",
        "mean_probs": r"A = \tfrac1L \textstyle\sum_l \tfrac12\big(\mathrm{up}(p^l_a) + 1 - "
        r"\mathrm{up}(p^l_n)\big), \quad p^l = \mathrm{softmax}_c(z^l)",
        "sum_probs": r"A = \textstyle\sum_l \tfrac12\big(\mathrm{up}(p^l_a) + 1 - "
        r"\mathrm{up}(p^l_n)\big) \in [0, L], \quad p^l = \mathrm{softmax}_c(z^l)",
    },
    "image_loss": {
        "focal": r"\mathcal L_{\text{img}} = \mathrm{Focal}\big(\mathrm{softmax}(z), y\big)",
        "ce": r"\mathcal L_{\text{img}} = \mathrm{CE}(z, y) = -\log \mathrm{softmax}(z)_y",
    },
    "vfm.mode": {
        "attn_bias": r"\mathrm{Attn}(X) = \mathrm{softmax}\big(QK^\top/\sqrt{d} + \beta\,M\big)\,V"
        r"\quad \text{(patch keys, last } n \text{ vision blocks; training sees it)}",
        "reweight": r"A' = A \cdot \big(1 + \alpha\,\mathrm{up}(M)\big) / (1 + \alpha)"
        r"\quad \text{(output map only, test time)}",
    },
    "image_score": {
        "hsf": r"s = \mathrm{softmax}_c\big(\langle f, t_c\rangle/\tau\big)_a, \quad "
        r"f = \mathrm{norm}\big(\alpha\,c + (1-\alpha)\,f_{\text{cls}}\big)",
        "cls": r"s = \mathrm{softmax}_c\big(\langle f_{\text{cls}}, t_c\rangle/\tau\big)_a",
        "text_max": r"s = \tfrac12\Big(\mathrm{softmax}_c\big(\langle f_{\text{cls}}, t_c\rangle/"
        r"\tau\big)_a + \min\big(1, \max_x A(x) / A_{\max}\big)\Big)"
        r"\quad (A \text{ the smoothed map, } A_{\max} \text{ its range})",
    },
    "evaluation.aupro": {
        "anomalyclip": r"\mathrm{AUPRO} = \int_0^1 \mathrm{PRO}\; d\widetilde{\mathrm{FPR}}, \quad "
        r"\widetilde{\mathrm{FPR}} = \frac{\mathrm{FPR} - \min \mathrm{FPR}}{\max \mathrm{FPR} - "
        r"\min \mathrm{FPR}} \text{ over the 200 evenly spaced thresholds with FPR} < 0.3",
        "exact": r"\mathrm{AUPRO}_{0.3} = \frac{1}{0.3}\int_0^{0.3} \mathrm{PRO}\; d\,\mathrm{FPR}"
        r"\ \text{(every map value a threshold, interpolated at 0.3)}",
    },
}


def choice_markdown(setting: str, active: str) -> str:
    """Markdown naming the active option of ``setting`` with its equation, then the alternatives.

    Example:
        >>> print(choice_markdown("image_loss", "ce").splitlines()[0])
        **`image_loss: ce`** (active, from the config):
    """
    options = CHOICES.get(setting)
    if options is None or active not in options:
        raise KeyError(
            f"no equation for {setting}: {active!r}; hxpe.equations.CHOICES knows "
            f"{ {k: sorted(v) for k, v in CHOICES.items()} }. Add it with its equation."
        )
    others = [f"`{o}`: ${eq}$" for o, eq in options.items() if o != active]
    return "\n".join(
        [
            f"**`{setting}: {active}`** (active, from the config):",
            "",
            f"$$\n{options[active]}\n$$",
            "",
            "Alternatives: " + "; ".join(others) + ".",
        ]
    )
