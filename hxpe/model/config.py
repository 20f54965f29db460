"""Settings of the model (stage 04/05) and of training (stage 04).

Every choice the paper leaves open is a named key here; ``hxpe/LEDGER.md`` maps each to its source
([S] stated by a source, [B] stated by the paper, [I] our inference). Class defaults are the paper
profile's values.

Example:
    >>> cfg = ModelConfig(base="anomalyclip")
    >>> cfg.anomalyclip.n_ctx, cfg.clip.layers
    (12, [6, 12, 18, 24])
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hxpe.limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_IMAGE_SIZE, MAX_WORKERS, MIN_IMAGE_SIZE


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClipConfig(_Section):
    model_name: str = Field("ViT-L-14-336-quickgelu", description="open_clip model name.")
    pretrained: str | None = Field(
        "openai",
        description="open_clip pretrained tag, or a local weights file (.safetensors: the demo's "
        "trained backbones); null = random init.",
    )
    config_file: str | None = Field(
        None,
        description="Extra open_clip JSON model config (tiny test models), registered before build.",
    )
    image_size: int = Field(
        518,
        ge=MIN_IMAGE_SIZE,
        le=MAX_IMAGE_SIZE,
        description="Input resolution; positional embeddings interpolated.",
    )
    layers: list[int] = Field(
        default_factory=lambda: [6, 12, 18, 24],
        description="1-based blocks whose patch tokens are used.",
    )
    activation: Literal["model", "quick_gelu", "gelu"] = Field(
        "model",
        description="MLP activation of both towers: the open_clip config's own (QuickGELU for the "
        "OpenAI weights), or forced. 'gelu' reproduces AdaCLIP as released (custom_clip.py builds "
        "CLIP without quick_gelu).",
    )


Fusion = Literal["sum_probs", "mean_probs", "mean_logits"]


class BaseArithmetic(_Section):
    """Arithmetic every base declares (defaults: its authors'; hxpe/LEDGER.md has file:line).

    Subclasses override the defaults; :mod:`hxpe.model.registry` reads them.
    """

    temperature: float = Field(
        0.07, gt=0.0, description="Similarity temperature τ (logits = cos/τ)."
    )
    layer_fusion: Fusion = Field(
        "mean_probs",
        description="sum_probs: Σ_l (up(p1)+1−up(p0))/2; mean_probs: the same averaged; "
        "mean_logits: softmax(mean_l up(logits)) (the per-layer loss maps are then "
        "softmax(up(logits)) instead of up(softmax)).",
    )
    align_corners: bool = Field(False, description="Bilinear upsampling of the layer maps.")
    pos_interpolation: Literal["bilinear", "bicubic"] = Field(
        "bicubic", description="Positional-embedding resize to a non-native grid."
    )
    cls_path: Literal["ln_post", "no_ln_post"] = Field(
        "ln_post", description="Score CLS: ln_post(x[0]) @ proj, or x[0] @ proj (AnomalyCLIP)."
    )
    object_word: Literal["generic", "class_name"] = Field(
        "generic", description="{obj} in prompts: model.object_name, or the image's class name."
    )
    prompt_cast: Literal["float16", "none"] = Field(
        "none", description="Round injected prompt tokens to float16 (the authors' .half() casts)."
    )
    image_loss: Literal["ce", "focal"] = Field("ce", description="Loss on the image score.")
    loss_weights: dict[Literal["focal", "dice", "image"], float] = Field(
        default_factory=lambda: {"focal": 1.0, "dice": 1.0, "image": 1.0}
    )
    batch_size: int = Field(
        8,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="Training batch size (train.batch_size overrides).",
    )
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="train.optimizer: base.")


class AdaClipConfig(BaseArithmetic):
    """AdaCLIP-style base: hybrid static + dynamic prompts in both branches, HSF image score."""

    temperature: float = Field(0.01, description="Logit scale 100 (adaclip.py:513, 525).")
    layer_fusion: Fusion = "mean_logits"
    align_corners: bool = True
    pos_interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    cls_path: Literal["ln_post", "no_ln_post"] = "ln_post"
    object_word: Literal["generic", "class_name"] = "class_name"
    prompt_cast: Literal["float16", "none"] = "float16"
    image_loss: Literal["ce", "focal"] = "focal"
    batch_size: int = 1
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    text_layout: Literal["overwrite", "slots"] = Field(
        "overwrite",
        description="overwrite: no text prompt in block 1, blocks 2..depth overwrite the first "
        "`length` word tokens (AdaCLIP); slots: dedicated placeholder slots from block 1.",
    )
    dynamic_from: Literal["raw", "normalized"] = Field(
        "raw", description="Dynamic prompts from ln_post(CLS) @ proj as is, or L2-normalised."
    )
    patch_head: Literal["raw_tokens", "joint_identity"] = Field(
        "raw_tokens",
        description="raw_tokens: Linear(vision width → embed) on raw block tokens (AdaCLIP, "
        "loads its checkpoints); joint_identity: identity-initialised Linear(embed → embed) "
        "after ln_post + proj.",
    )

    prompt_depth: int = Field(
        4, ge=1, le=64, description="Blocks (from the first) that receive prompts."
    )
    prompt_length: int = Field(5, ge=1, le=64, description="Prompt tokens per prompted block.")
    prompt_types: list[Literal["static", "dynamic"]] = Field(
        default_factory=lambda: ["static", "dynamic"]
    )
    branches: list[Literal["vision", "language"]] = Field(
        default_factory=lambda: ["vision", "language"]
    )
    template_set: str = Field("adaclip", description="Template list in prompts.yaml.")
    hsf: bool = Field(True, description="Hybrid semantic fusion for the image score.")
    k_clusters: int = Field(20, ge=1, le=4096, description="k-means clusters of HSF.")
    hsf_topk_factor: int = Field(
        5, ge=1, description="HSF clusters the k·factor most abnormal patches."
    )
    hsf_alpha: float = Field(
        0.2, ge=0.0, le=1.0, description="Weight of the cluster feature against the CLS."
    )
    hsf_kmeans: Literal["sklearn", "torch"] = Field(
        "sklearn",
        description="sklearn: KMeans(k, n_init='auto') on the concatenated layer tokens, drawing "
        "from one seeded NumPy RandomState (AdaCLIP); torch: batched deterministic k-means.",
    )
    hsf_seed: int = Field(111, description="Seed of the k-means RNG (AdaCLIP setup_seed(111)).")
    kmeans_iters: int = Field(
        10, ge=1, le=10000, description="Lloyd iterations of the torch k-means."
    )


class AnomalyClipConfig(BaseArithmetic):
    """AnomalyCLIP-style base: object-agnostic contexts, deep text prompts, v-v attention."""

    temperature: float = 0.07
    layer_fusion: Fusion = "sum_probs"
    align_corners: bool = False
    pos_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    cls_path: Literal["ln_post", "no_ln_post"] = "no_ln_post"
    object_word: Literal["generic", "class_name"] = "generic"
    prompt_cast: Literal["float16", "none"] = "float16"
    image_loss: Literal["ce", "focal"] = "ce"
    loss_weights: dict[Literal["focal", "dice", "image"], float] = Field(
        default_factory=lambda: {"focal": 4.0, "dice": 4.0, "image": 1.0},
        description="λ = 4 on the map terms (train.py `lam = 4`).",
    )
    batch_size: int = 8
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    text_layout: Literal["overwrite", "slots"] = Field(
        "overwrite",
        description="overwrite: depth−1 deep prompts overwrite context tokens 1..length after SOT "
        "from text block 2 (AnomalyCLIP); slots: `depth` prompts in dedicated slots from block 1.",
    )

    n_ctx: int = Field(
        12, ge=1, le=64, description="Learnable context tokens per normal/abnormal prompt."
    )
    text_prompt_length: int = Field(
        4, ge=0, le=64, description="Deep text prompt tokens (t_n_ctx)."
    )
    text_prompt_depth: int = Field(
        9, ge=0, le=64, description="Text blocks receiving deep prompts."
    )
    normal_template: str = Field("{obj}.", description="After the contexts.")
    abnormal_template: str = Field("damaged {obj}.", description="After the contexts.")
    vv_attention: bool = Field(True, description="v-v attention (DPAM) switch.")
    vv_last_n: int = Field(
        19, ge=0, le=64, description="v-v attention on the last N blocks (DPAM_layer=20)."
    )


class WinClipConfig(BaseArithmetic):
    """WinCLIP zero-shot (hxpe.model.winclip): multi-scale windows re-encoded by CLIP, no training."""

    template_set: str = Field("winclip", description="Template list in prompts.yaml.")
    scales: list[int] = Field(
        default_factory=lambda: [2, 3],
        description="Window sizes in patches (stride 1 over the patch grid); WinCLIP's 2x2 and 3x3.",
    )


class ExplainConfig(_Section):
    """Explainable text prompts: the image's gated defect phrase in its abnormal prompt."""

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


class VfmConfig(_Section):
    """DINOv2 attention prompts (method.md Corrections, §2.5)."""

    enabled: bool = True
    model_id: str = Field("facebook/dinov2-small", description="Hugging Face id (weights.yaml).")
    config_file: str | None = Field(
        None, description="transformers Dinov2Config JSON: random init (tiny test models)."
    )
    weights_dir: str | None = Field(
        None,
        description="Local folder for Dinov2Model.from_pretrained (config.json + model.safetensors:"
        " the demo's trained DINOv2); used when config_file is null.",
    )
    mode: Literal["attn_bias", "reweight"] = Field(
        "attn_bias",
        description="Bias CLIP's later attention on patch keys (trained through), or re-weight "
        "the final map (a test-time ablation: training never sees it).",
    )
    distance: Literal["mutual_nn", "nn"] = Field(
        "mutual_nn", description="Patch distance to the normal reference."
    )
    calibration_quantile: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Normal scale s = this quantile of the reference's own NN distances.",
    )
    salience_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="γ in M = d̂·((1−γ) + γ·ŝ), ŝ = DINOv2 CLS self-attention."
    )
    rarity_k: int = Field(
        5, ge=1, le=4096, description="No reference: mean distance to k nearest own patches."
    )
    alpha: float = Field(0.5, ge=0.0, description="reweight: A = A_clip·(1 + α·M)/(1 + α).")
    bias_beta: float = Field(1.0, ge=0.0, description="attn_bias: logits += β·M on patch keys.")
    learn_beta: bool = Field(False, description="attn_bias: train β (a scalar parameter).")
    bias_last_n: int = Field(
        7, ge=0, le=64, description="attn_bias: the last N CLIP blocks (18–24)."
    )

    @property
    def trains_through(self) -> bool:
        """Whether the prompt map reaches the losses (and so shapes the trained prompts)."""
        return self.enabled and self.mode == "attn_bias"


class ModelConfig(_Section):
    clip: ClipConfig = Field(default_factory=ClipConfig)
    base: Literal["adaclip", "anomalyclip", "winclip"] = "adaclip"
    adaclip: AdaClipConfig = Field(default_factory=AdaClipConfig)
    anomalyclip: AnomalyClipConfig = Field(default_factory=AnomalyClipConfig)
    winclip: WinClipConfig = Field(default_factory=WinClipConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    vfm: VfmConfig = Field(default_factory=VfmConfig)
    reference_rule: Literal["first_normal_train", "none"] | None = Field(
        None,
        description="Normal reference of this variant's VLM descriptions and DINOv2 prompts "
        "('none': no reference, method.md §4 row 1); null = data.reference_rule.",
    )
    object_name: str = Field(
        "object", description="Generic object word ({obj}) of bases with object_word: generic."
    )
    recipe: str = Field(
        "hxpe",
        description="Training and testing recipe (hxpe.model.recipes): 'hxpe' (the paper's, HXPE "
        "rows), 'adaclip' / 'anomalyclip' (the authors' released scripts, baseline rows), "
        "'anomalyclip_paper' (AnomalyCLIP with the paper's four layers). Sets the feature layers "
        "(model.clip.layers, or only the deepest) and train.* values not set explicitly.",
    )
    checkpoint: str | None = Field(
        None,
        description="An imported authors' checkpoint (hxpe/weights.yaml key, e.g. "
        "released_adaclip): evaluated as is, never trained.",
    )
    score_mode: Literal["base", "text", "text_max"] = Field(
        "base", description="Image score: the base's own, text only, or (text + max map)/2."
    )
    sigma: float = Field(
        4.0, ge=0.0, le=256.0, description="Gaussian σ (pixels) on the output map; 0 = none."
    )
    random_init_seed: int = Field(
        0, description="Seed of randomly initialised frozen weights (tiny models, dry runs)."
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        from hxpe.model.recipes import recipe, recipe_layers

        if not self.clip.layers or min(self.clip.layers) < 1:
            raise ValueError(
                f"model.clip.layers must be 1-based block numbers; got {self.clip.layers}"
            )
        try:
            chosen = recipe(self.recipe)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        # the recipe's layers (idempotent: a checkpoint's stored layers resolve to themselves)
        self.clip.layers = recipe_layers(chosen, self.clip.layers)
        return self

    @property
    def trains(self) -> bool:
        """Whether this configuration has trainable parameters (winclip does not)."""
        from hxpe.model.registry import base_spec  # the registry imports this module

        return base_spec(self.base).trains and self.checkpoint is None

    @property
    def arithmetic(self) -> BaseArithmetic:
        """The base's section (its arithmetic keys): ``self.adaclip``, ``self.anomalyclip``..."""
        return getattr(self, self.base)


class TrainConfig(_Section):
    """Training settings. Every value left ``null`` is the variant's recipe's
    (``model.recipe``, :mod:`hxpe.model.recipes`); a value set here overrides every recipe of
    the profile (the demo scales epochs and batch size down this way) and the checkpoint records
    it (``config.json`` ``train.overrides``)."""

    epochs: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs over the auxiliary test split; null = recipe's.",
    )
    lr: float | None = Field(
        None, gt=0.0, le=10.0, description="Learning rate; null = the recipe's."
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="null = the recipe's (adaclip 1, anomalyclip 8; hxpe: the base's own).",
    )
    optimizer: Literal["base", "adam", "adamw", "sgd"] | None = Field(
        None,
        description="null = the recipe's (adaclip AdamW, anomalyclip Adam; hxpe: the base's "
        "own); 'base' = the base's own (model.<base>.optimizer).",
    )
    betas: tuple[float, float] | None = Field(None, description="Adam betas; null = recipe's.")
    weight_decay: float | None = Field(
        None, description="AdamW weight decay; null = the recipe's (torch's default 0.01)."
    )
    mosaic_rates: dict[str, float] | None = Field(
        None,
        description="AdaCLIP's 2x2 mosaic rate per training dataset kind, replacing the "
        "recipe's table for recipes that have a mosaic (adaclip: mvtec 0.2, others 0); null = "
        "the recipe's.",
    )
    split: str = Field("test", description="Training split of the auxiliary index (protocol).")
    focal_gamma: float = Field(2.0, ge=0.0)
    focal_smooth: float = Field(
        1e-5, ge=0.0, lt=1.0, description="Focal label smoothing (both authors' loss.py)."
    )
    loss_weights: dict[Literal["focal", "dice", "image"], float] | None = Field(
        None, description="None = the base's own (anomalyclip λ = 4 on the maps, adaclip 1)."
    )
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS)
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (smoke runs)."
    )
