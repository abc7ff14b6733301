"""Typed configuration: every field has a default and a one-line description.

A config is built from a preset, then a YAML file, then `key=value` overrides
(e.g. `train.batch_size=64`), each step validated; the fully resolved config is
saved in every run as `config.yaml`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from difftrain import atomic
from difftrain.errors import UserError


class Section(BaseModel):
    # Unknown keys are typos: refuse them instead of silently ignoring them. A number where text is wanted is the
    # text (data.path=2024 names the folder "2024": YAML reads the override as a number).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class DataConfig(Section):
    path: str | None = Field("digits", description="Prepared dataset folder, or a built-in dataset name ('digits') prepared into the run.")
    unlabelled: str | None = Field(None, description="A prepared dataset of more items of the same kind and shape whose labels, if any, are not used: a data.unlabelled_share of every batch comes from it under the 'no label' condition, so a class-conditional model learns what the items look like from all of them and the classes from the labelled ones.")
    unlabelled_share: float = Field(0.5, gt=0, lt=1, description="Share of every batch drawn from data.unlabelled.")


class UNetConfig(Section):
    """model.arch=unet: diffusers' UNet2DModel, for images."""

    channels: list[int] = Field([64, 128, 128], description="Output channels of each UNet resolution level (one level per entry).")
    attention: list[bool] = Field([False, True, False], description="Self-attention at each resolution level.")
    layers_per_block: int = Field(2, ge=1, description="ResNet blocks per resolution level.")
    attention_head_dim: int = Field(32, ge=1, description="Channels per attention head.")
    norm_groups: int = Field(32, ge=1, description="Groups of the GroupNorm layers (must divide every channel count).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in the ResNet blocks.")
    unet_options: dict[str, Any] = Field({}, description="Further UNet2DModel arguments, by diffusers' names (e.g. act_fn); set from the source's config by --init.")
    caption_width: int = Field(128, ge=32, description="Captioned images: width of the caption encoder's tokens, which the UNet's attention levels attend to (a multiple of 32).")
    caption_depth: int = Field(2, ge=1, description="Captioned images: transformer layers of the caption encoder, trained with the network.")

    @model_validator(mode="after")
    def _check_levels(self) -> "UNetConfig":
        if len(self.attention) != len(self.channels):
            raise ValueError(f"model.unet.attention has {len(self.attention)} entries but model.unet.channels has {len(self.channels)}; give one per level")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"model.unet.channels {bad} are not divisible by model.unet.norm_groups={self.norm_groups}")
        # Attention layers (always in the middle block) split channels into heads.
        bad = [c for c in self.channels if c % self.attention_head_dim]
        if bad:
            raise ValueError(f"model.unet.channels {bad} are not multiples of model.unet.attention_head_dim={self.attention_head_dim}")
        return self


class MLPConfig(Section):
    """model.arch=mlp: a residual MLP, for vectors (points, rows)."""

    width: int = Field(256, ge=8, description="Hidden units of every residual block.")
    depth: int = Field(4, ge=1, description="Residual blocks.")
    embedding_dim: int = Field(128, ge=8, description="Size of the noise-level and label embeddings (even: cosine and sine pairs).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in the residual blocks.")

    @field_validator("embedding_dim")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"model.mlp.embedding_dim={value} must be even (cosine and sine features in pairs)")
        return value


def _even_embedding(section: str, value: int) -> int:
    if value % 2:
        raise ValueError(f"model.{section}.embedding_dim={value} must be even (cosine and sine features in pairs)")
    return value


class UNet1DConfig(Section):
    """model.arch=unet1d: a 1-D convolutional UNet over time, for multivariate series windows (C, L)."""

    channels: list[int] = Field([64, 128, 256], description="Output channels of each resolution level (one level per entry; every level but the last halves the time axis).")
    layers_per_block: int = Field(2, ge=1, description="Residual blocks per resolution level.")
    attention: list[bool] = Field([False, False, True], description="Self-attention over time at each resolution level (the middle block always has it).")
    attention_heads: int = Field(4, ge=1, description="Heads of the self-attention layers (must divide the channels of every level with attention and the last level's).")
    embedding_dim: int = Field(128, ge=8, description="Size of the noise-level and label embeddings (even: cosine and sine pairs).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in the residual blocks.")
    norm_groups: int = Field(8, ge=1, description="Groups of the GroupNorm layers (must divide every channel count).")

    @field_validator("embedding_dim")
    @classmethod
    def _even(cls, value: int) -> int:
        return _even_embedding("unet1d", value)

    @model_validator(mode="after")
    def _check_levels(self) -> "UNet1DConfig":
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"model.unet1d.channels={self.channels} must list at least one positive channel count")
        if len(self.attention) != len(self.channels):
            raise ValueError(f"model.unet1d.attention has {len(self.attention)} entries but model.unet1d.channels has {len(self.channels)}; give one per level")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"model.unet1d.channels {bad} are not divisible by model.unet1d.norm_groups={self.norm_groups}")
        attended = [c for c, a in zip(self.channels, self.attention) if a] + [self.channels[-1]]
        bad = sorted({c for c in attended if c % self.attention_heads})
        if bad:
            raise ValueError(f"model.unet1d.channels {bad} (levels with attention, and the last) are not divisible by model.unet1d.attention_heads={self.attention_heads}")
        return self


class Transformer1DConfig(Section):
    """model.arch=transformer1d: a DiT-style transformer (adaLN-Zero) over patches of time steps, for series windows (C, L)."""

    width: int = Field(128, ge=8, description="Token width (even, divisible by model.transformer1d.heads).")
    depth: int = Field(4, ge=1, description="Transformer blocks.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    embedding_dim: int = Field(128, ge=8, description="Size of the sinusoidal noise-level features (even: cosine and sine pairs).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in attention and the blocks' MLPs.")
    patch: int = Field(1, ge=1, description="Time steps per token (windows are padded to a multiple).")

    @field_validator("embedding_dim")
    @classmethod
    def _even(cls, value: int) -> int:
        return _even_embedding("transformer1d", value)

    @model_validator(mode="after")
    def _check_width(self) -> "Transformer1DConfig":
        if self.width % 2:
            raise ValueError(f"model.transformer1d.width={self.width} must be even (sinusoidal position features in pairs)")
        if self.width % self.heads:
            raise ValueError(f"model.transformer1d.width={self.width} is not divisible by model.transformer1d.heads={self.heads}")
        return self


class DiTConfig(Section):
    """model.arch=dit: a patch transformer with adaLN-Zero conditioning (DiT, Peebles & Xie 2023), for images (C, H, W)."""

    width: int = Field(256, ge=8, description="Token width (divisible by model.dit.heads and by 4: half the position features per axis, in cosine and sine pairs).")
    depth: int = Field(6, ge=1, description="Transformer blocks.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    patch: int = Field(2, ge=1, description="Pixels per side of a patch (one token); it must divide the image's height and width.")
    embedding_dim: int = Field(256, ge=8, description="Size of the sinusoidal noise-level features (even: cosine and sine pairs).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in attention and the blocks' MLPs.")
    caption_depth: int = Field(2, ge=1, description="Captioned images: transformer layers of the caption encoder, trained with the network.")

    @model_validator(mode="after")
    def _check_width(self) -> "DiTConfig":
        if self.width % self.heads or self.width % 4:
            raise ValueError(f"model.dit.width={self.width} must be divisible by model.dit.heads={self.heads} and by 4")
        _even_embedding("dit", self.embedding_dim)
        return self


class TokenTransformerConfig(Section):
    """model.arch=token_transformer: a bidirectional transformer with rotary positions over tokens (text, masked diffusion)."""

    width: int = Field(256, ge=8, description="Token width (divisible by model.token_transformer.heads, with an even per-head size).")
    depth: int = Field(6, ge=1, description="Transformer blocks.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in attention and the blocks' MLPs.")

    @model_validator(mode="after")
    def _check_width(self) -> "TokenTransformerConfig":
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"model.token_transformer.width={self.width} must split into model.token_transformer.heads="
                             f"{self.heads} heads of an even size (rotary positions turn features in pairs)")
        return self


ARCHITECTURES = ("unet", "mlp", "unet1d", "transformer1d", "token_transformer")


class AutoencoderConfig(Section):
    """model.arch=autoencoder: diffusers' AutoencoderKL (Stable Diffusion's VAE), the latent space of `train --latent`."""

    channels: list[int] = Field([64, 128], description="Channels of each resolution level; each level after the first halves the image's height and width.")
    layers_per_block: int = Field(1, ge=1, description="ResNet blocks per level.")
    latent_channels: int = Field(4, ge=1, description="Channels of the latent.")
    norm_groups: int = Field(32, ge=1, description="Groups of the GroupNorm layers (must divide every channel count).")
    attention: bool = Field(True, description="Self-attention in the middle blocks.")
    kl_weight: float = Field(1e-6, ge=0, description="Weight of the posterior's KL divergence against the L1 reconstruction error, both summed over the image (Stable Diffusion's 1e-6).")

    @model_validator(mode="after")
    def _check_groups(self) -> "AutoencoderConfig":
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"model.autoencoder.channels {bad} are not divisible by model.autoencoder.norm_groups={self.norm_groups}")
        return self


class ModelConfig(Section):
    arch: Literal["auto", "unet", "dit", "mlp", "unet1d", "transformer1d", "token_transformer", "autoencoder"] = Field("auto", description="Network: 'unet' (diffusers' UNet2DModel, images), 'dit' (a patch transformer with adaLN-Zero, images), 'mlp' (vectors), 'unet1d' (1-D convolutional UNet, series windows), 'transformer1d' (DiT-style transformer, series windows), 'token_transformer' (bidirectional transformer, text), 'autoencoder' (a VAE for images, not a diffusion model: the latent space of model.latent); 'auto': the data's default.")
    unet: UNetConfig = Field(default_factory=UNetConfig, description="Settings of model.arch=unet.")
    dit: DiTConfig = Field(default_factory=DiTConfig, description="Settings of model.arch=dit.")
    mlp: MLPConfig = Field(default_factory=MLPConfig, description="Settings of model.arch=mlp.")
    unet1d: UNet1DConfig = Field(default_factory=UNet1DConfig, description="Settings of model.arch=unet1d.")
    transformer1d: Transformer1DConfig = Field(default_factory=Transformer1DConfig, description="Settings of model.arch=transformer1d.")
    token_transformer: TokenTransformerConfig = Field(default_factory=TokenTransformerConfig, description="Settings of model.arch=token_transformer.")
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig, description="Settings of model.arch=autoencoder.")
    text_encoder: str | None = Field(None, description="Captioned images: a local pretrained text model folder (transformers format, with its tokenizer; e.g. a CLIPTextModel) used frozen in place of a caption encoder trained from scratch; each caption's hidden states are computed once.")
    latent: str | None = Field(None, description="Latent diffusion (`train --latent RUN`): an autoencoder run, or one of its checkpoints, whose latent space the model diffuses in, or a diffusers AutoencoderKL folder (or a pipeline folder with a vae/); the images are encoded once. A run is pinned to that checkpoint's folder when training starts.")
    latent_scale: float | None = Field(None, gt=0, description="Latent diffusion: the factor the latents are multiplied by. None: measured on the training latents (to unit RMS) for an autoencoder run, the folder's scaling_factor for a diffusers one. Set by --init, whose model was trained at its own scale.")
    conditional: bool = Field(True, description="Condition on the dataset's class labels when it has them.")
    label_dropout: float = Field(0.1, ge=0, lt=1, description="Probability of dropping the label in training, for classifier-free guidance.")
    observe: dict[str, float] = Field({"none": 0.5, "random": 0.2, "block": 0.1, "history": 0.2}, description="Series: how often training observes each kind of part of a window (none: generation, random: scattered values, block: all but a stretch of time, history: the first steps, for forecasting); one model then generates, imputes and forecasts. {}: generation only.")

    @field_validator("observe")
    @classmethod
    def _strategies(cls, value: dict[str, float]) -> dict[str, float]:
        from difftrain.conditioning.observed import STRATEGIES

        unknown = sorted(set(value) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"model.observe names {', '.join(unknown)}; the strategies are {', '.join(STRATEGIES)}")
        if any(w < 0 for w in value.values()) or (value and not sum(value.values()) > 0):
            raise ValueError(f"model.observe weights must be >= 0 with a positive sum, got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, raw: Any) -> Any:
        # Configs from before per-architecture sections (and `model.channels=...` overrides) name UNet keys at the top.
        if isinstance(raw, dict) and any(key in UNetConfig.model_fields for key in raw):
            raw = dict(raw)
            unet = dict(raw.get("unet") or {})
            for key in list(raw):
                if key in UNetConfig.model_fields:
                    unet[key] = raw.pop(key)
            raw["unet"] = unet
        return raw

    @model_validator(mode="before")
    @classmethod
    def _unconditional_autoencoder(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("arch") == "autoencoder":  # it reconstructs what it is given: no labels
            raw = {**raw, "conditional": False}
        return raw

    @property
    def is_autoencoder(self) -> bool:
        """The network is an autoencoder, trained to reconstruct (a latent space), not a denoiser: it draws no samples."""
        return self.arch == "autoencoder"

    @model_validator(mode="after")
    def _latent_of_a_diffusion_model(self) -> "ModelConfig":
        if self.is_autoencoder and self.latent:
            raise ValueError("model.latent (train --latent) trains a diffusion model in an autoencoder's latent space; "
                             "model.arch=autoencoder trains the autoencoder itself: drop one of them")
        return self

    def section(self, arch: str) -> Section:
        """The settings of architecture `arch`."""
        return getattr(self, arch)


class DiffusionConfig(Section):
    formulation: Literal["edm", "vp"] = Field("edm", description="'edm' (Karras et al. 2022 preconditioning) or 'vp' (DDPM discrete schedule).")
    prediction: Literal["eps", "v"] = Field("eps", description="Network target for 'vp': noise 'eps' or velocity 'v'.")
    weighting: Literal["auto", "edm", "min_snr", "uniform"] = Field("auto", description="Loss weighting over noise levels: 'edm', 'min_snr' (min-SNR-gamma), 'uniform' (MSE on the network's target; DDPM's L_simple) or 'auto', the formulation's own ('edm' for edm, 'uniform' for vp), saved resolved.")
    min_snr_gamma: float = Field(5.0, gt=0, description="Gamma of the min-SNR weighting.")
    categories: Literal["continuous", "softmax"] = Field("continuous", description="How the denoiser reads a categorical value (a table's one-hot columns): 'continuous', like any number, or 'softmax', the network's outputs as logits and the denoised value the expected one-hot (CDCD).")
    sigma_data: float | Literal["auto"] = Field("auto", description="EDM: standard deviation of the data as the model sees it; 'auto': the data's own (0.5 for pixels in [-1, 1], measured for other data), recorded in config.yaml when training starts.")

    @field_validator("sigma_data")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if value != "auto" and not value > 0:
            raise ValueError(f"diffusion.sigma_data must be positive or 'auto', got {value!r}")
        return value
    p_mean: float = Field(-1.2, description="EDM: mean of log(sigma) during training.")
    p_std: float = Field(1.2, gt=0, description="EDM: standard deviation of log(sigma) during training.")
    beta_schedule: Literal["linear", "scaled_linear"] = Field("linear", description="VP: beta schedule (diffusers' names).")
    beta_start: float = Field(1e-4, gt=0, description="VP: first beta.")
    beta_end: float = Field(0.02, gt=0, lt=1, description="VP: last beta.")
    num_timesteps: int = Field(1000, ge=2, description="VP: number of discrete timesteps.")

    @model_validator(mode="after")
    def _resolve_weighting(self) -> "DiffusionConfig":
        # Resolved here, so config.yaml records the weighting actually trained with. VP's own is Ho 2020's L_simple:
        # EDM's lambda is 4 sigma^2 + 1 times L_simple's, ~1e5 at VP's sigma_max (~157).
        if self.weighting == "auto":
            self.weighting = "edm" if self.formulation == "edm" else "uniform"
        return self


class OptimConfig(Section):
    name: Literal["adamw", "lamb"] = Field("adamw", description="Optimizer: 'adamw' or 'lamb' (You et al. 2020).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="Adam betas.")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    warmup_images: int = Field(10_000, ge=0, description="Linear LR warm-up, in training images.")
    schedule: Literal["constant", "cosine", "inverse_sqrt"] = Field("constant", description="LR after warm-up: 'constant', 'cosine' (to 0 at the end) or 'inverse_sqrt'.")
    decay_images: int = Field(100_000, gt=0, description="'inverse_sqrt': images after which the LR falls as 1/sqrt(images).")
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this value (0 disables).")


# Post-hoc EMA's longest relative length: a plain average of the whole training (gamma = 0).
POSTHOC_MAX_SIGMA_REL = (1 / 12) ** 0.5


class TrainConfig(Section):
    batch_size: int = Field(128, ge=1, description="Images per optimizer step (all micro-batches and processes together).")
    accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step (gradient accumulation).")
    duration_images: int | None = Field(55_000, ge=1, description="Training length in images (ignored when duration_steps is set).")
    duration_steps: int | None = Field(None, ge=1, description="Training length in optimizer steps (overrides duration_images).")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="'auto': bf16 autocast on GPUs with bf16 and on CPUs with native bf16 (AVX512-BF16, AMX), else float32.")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the network; 'auto': on CUDA GPUs (on CPU ~15% faster after a minute of compiling: 'on' pays for long runs).")
    channels_last: Literal["auto", "on", "off"] = Field("auto", description="Channels-last memory format for the convolutions; 'auto': on CUDA GPUs.")
    cuda_graphs: Literal["auto", "on", "off"] = Field("auto", description="Replay the compiled network's kernels as CUDA graphs (torch.compile mode 'reduce-overhead'): one launch instead of hundreds, whose cost, not the GPU, bounds small networks on fast GPUs; 'auto': on whenever the network is compiled on one CUDA GPU (one process) and gradients are not accumulated.")
    hflip: bool = Field(False, description="Mirror each training image left-right with probability 1/2 (for faces or scenes; not for digits or text).")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="'auto' picks a GPU when there is one.")
    ema_halflife_images: int = Field(500_000, ge=1, description="EMA half-life in training images (Karras et al. 2022).")
    ema_rampup: float | None = Field(0.05, gt=0, description="Cap the EMA half-life at this fraction of images seen (None disables).")
    posthoc_ema: list[float] = Field([], description="Post-hoc EMA (EDM2): relative lengths (sigma_rel, below 0.2887) of the power-function EMAs kept beside the EMA and snapshotted into RUN/posthoc/, from which `difftrain eval --ema-length` reconstructs any length after training; e.g. [0.05, 0.10]. Empty: off.")
    posthoc_every_images: int | None = Field(None, ge=1, description="Snapshot the post-hoc EMAs every this many images (None: every 1/16 of the training length), and at every checkpoint.")
    seed: int = Field(0, description="Seed for weights, data order and noise.")
    log_every_images: int = Field(2_000, ge=1, description="Log loss and speed to metrics.jsonl/TensorBoard every this many images.")
    grid_every_images: int = Field(20_000, ge=0, description="Write a PNG sample grid every this many images (0: only at the end).")
    checkpoint_every_images: int = Field(20_000, ge=0, description="Write a checkpoint every this many images (0: only at the end).")
    keep_checkpoints: int = Field(3, ge=1, description="Keep the latest K checkpoints.")
    max_nonfinite_steps: int = Field(100, ge=1, description="Stop the run when this many optimizer steps in a row had non-finite gradients (each is skipped; checked at every log): it no longer learns.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (None: torch's default).")

    @field_validator("mixed_precision", "compile", "channels_last", "cuda_graphs", mode="before")
    @classmethod
    def _switch_words(cls, value: Any, info) -> Any:
        # YAML reads no/off as False and on/yes as True: give the words back.
        if isinstance(value, bool):
            return ("on" if value else "off") if info.field_name != "mixed_precision" else (value or "no")
        return value

    @model_validator(mode="after")
    def _check_batch(self) -> "TrainConfig":
        if self.duration_images is None and self.duration_steps is None:
            raise ValueError("set train.duration_images or train.duration_steps: training needs a length")
        if self.batch_size % self.accumulation:
            raise ValueError(f"train.batch_size={self.batch_size} is not divisible by train.accumulation={self.accumulation}")
        bad = [s for s in self.posthoc_ema if not 0 < s < POSTHOC_MAX_SIGMA_REL]
        if bad or len(set(self.posthoc_ema)) != len(self.posthoc_ema):
            raise ValueError(f"train.posthoc_ema={self.posthoc_ema}: give distinct relative lengths in (0, 0.2887), "
                             "e.g. [0.05, 0.10] (0.2887 is the average of the whole training)")
        return self

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.accumulation


class SampleConfig(Section):
    sampler: Literal["heun", "euler", "dpmpp_2m", "ddim", "ddpm", "ancestral"] = Field("heun", description="Default sampler for grids, `sample` and evaluation: heun, euler, dpmpp_2m, ddim, ddpm (continuous formulations) or ancestral (masked diffusion: text).")
    steps: int = Field(18, ge=1, description="Sampling steps (heun uses 2*steps-1 network evaluations).")
    schedule: Literal["karras", "uniform"] = Field("karras", description="Noise levels: 'karras' (rho=7) or 'uniform' timesteps.")
    guidance: float = Field(1.0, ge=0, description="Classifier-free guidance weight (1: none).")
    temperature: float = Field(1.0, gt=0, description="Masked diffusion (text): the log-probabilities are divided by it before each draw (below 1: likelier, less varied text; 1: the model itself).")
    batch_size: int = Field(500, ge=1, description="Samples per network call; with the seed it decides the images (each batch has its own random stream, so processes can share them out).")


# Sample metrics (fid, kid, pr, cas, mem) and the model metric nll; evaluation/suite.py describes them.
MetricName = Literal["fid", "kid", "pr", "dist", "cas", "mem", "nll", "judge", "forecast", "impute"]


def metric_family(metric: str) -> str:
    """The entry of eval.metrics / eval.during_metrics that computes `metric` (precision comes with pr)."""
    return {"precision": "pr", "recall": "pr", "density": "pr", "coverage": "pr", "nll_bits_per_dim": "nll",
            "sliced_wasserstein": "dist", "energy_distance": "dist", "discriminative": "dist", "predictive": "dist",
            "correlational": "dist", "column_shape_error": "dist", "pair_trend_error": "dist", "c2st_auc": "dist",
            "alpha_precision": "dist", "beta_recall": "dist", "judge_perplexity": "judge"}.get(metric, metric)


class EvalConfig(Section):
    n_samples: int = Field(1000, ge=10, description="Samples generated for an evaluation (`difftrain eval`, the end of `demo`).")
    metrics: list[MetricName] = Field(["fid", "kid", "pr", "cas", "mem"], description="Metrics of `difftrain eval`: fid, kid, pr, dist (data-space scores: vectors' distances; series' discriminative, predictive, correlational), cas, mem, nll; series models also forecast and impute; text also judge.")
    extractor: str = Field("auto", description="Features: domain, inception, a TorchScript file, or auto (inception if its weights are set).")
    inception_weights: Optional[str] = Field(None, description="Local file of the FID Inception-v3 weights (never downloaded).")
    classifier_epochs: int = Field(20, ge=1, description="Epochs of the small classifiers (domain features, CAS).")
    k: int = Field(5, ge=1, description="Neighbours for precision, recall, density and coverage.")
    nll_images: int = Field(256, ge=1, description="Held-out images for the likelihood (nll).")
    nll_steps: int = Field(128, ge=4, description="Heun steps of the probability-flow ODE for the likelihood; for masked diffusion (text), draws of the masking per held-out sequence.")
    judge_steps: int = Field(1000, ge=1, description="judge (text): training steps of the autoregressive judge of generated text (the run's network size, made causal; trained once per dataset and cached beside it).")
    horizon: int = Field(0, ge=0, description="forecast: steps hidden at the end of each held-out window (0: a quarter of the window).")
    season: int = Field(0, ge=0, description="forecast: the seasonal-naive baseline's season in steps (0: the horizon).")
    impute_fraction: float = Field(0.5, gt=0, lt=1, description="impute: share of each held-out window's values hidden at random.")
    task_windows: int = Field(100, ge=1, description="forecast, impute: held-out windows scored (evenly spread over the tail).")
    task_paths: int = Field(50, ge=1, description="forecast, impute: sample paths per window (CRPS, median, mean).")
    every_images: int = Field(0, ge=0, description="Evaluate during training every this many images (0: never).")
    during_n: int = Field(256, ge=10, description="Samples per evaluation during training.")
    during_metrics: list[MetricName] = Field(["fid"], description="Metrics computed during training.")
    best_metric: Literal["fid", "kid", "precision", "recall", "density", "coverage", "sliced_wasserstein", "energy_distance", "discriminative", "predictive", "correlational",
                         "column_shape_error", "pair_trend_error", "c2st_auc", "alpha_precision", "beta_recall", "cas",
                         "nll_bits_per_dim", "judge_perplexity"] = Field("fid", description="The metric that picks checkpoints/best.")

    @model_validator(mode="after")
    def _best_is_computed(self) -> "EvalConfig":
        family = metric_family(self.best_metric)
        if self.every_images and family not in self.during_metrics:
            raise ValueError(f"eval.best_metric={self.best_metric} is not among eval.during_metrics={self.during_metrics}")
        return self



class FinetuneConfig(Section):
    init: Optional[str] = Field(None, description="Start from these weights: a run folder, one of its checkpoints, or a diffusers folder (`train --init`).")
    allow_partial: bool = Field(False, description="Start even when some source weights do not fit the network (they are reported either way).")
    lora_rank: int = Field(0, ge=0, description="LoRA rank (0: train the weights themselves); LoRA is merged into the weights for sampling and export.")
    lora_alpha: Optional[float] = Field(None, gt=0, description="LoRA scale numerator (None: the rank, a scale of 1).")
    lora_targets: list[str] = Field([], description="Modules given LoRA adapters, by name or name ending ([]: the network's own choice, for the UNet its attention, convolution and time-embedding layers).")
    train_only: list[str] = Field([], description="Train only these modules (name prefixes, e.g. UNet2DModel's up_blocks, class_embedding); freeze the rest.")
    replay: float = Field(0.0, ge=0, lt=1, description="Fraction of every batch drawn from the --init run's training data, against forgetting.")
    replay_data: Optional[str] = Field(None, description="Prepared dataset to replay (default: the --init run's own).")
    forgetting: bool = Field(True, description="After training from a run, score the source and the result on the source's data and the new data.")


class Config(Section):
    preset: str | None = Field(None, description="The preset these settings started from (a record kept by --preset, for `difftrain runs`; it changes nothing itself).")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)


# Presets are overrides of the defaults, so a reader sees what each one changes.
PRESETS: dict[str, dict[str, Any]] = {
    # sklearn digits: 8x8 grayscale, 1797 images; a few CPU minutes.
    "digits": {
        "data": {"path": "digits"},
        "model": {"unet": {"channels": [64, 128], "attention": [False, True], "layers_per_block": 2}},
        "optim": {"lr": 2e-3, "warmup_images": 5_000},
        "train": {"batch_size": 128, "duration_images": 55_000, "ema_halflife_images": 5_000,
                  "log_every_images": 2_560, "grid_every_images": 11_000, "checkpoint_every_images": 11_000},
        "eval": {"every_images": 11_000, "during_n": 256},
    },
    # Point sets (two moons by default; any `data prepare --kind points` folder with --data): an MLP, about a CPU minute.
    "points": {
        "data": {"path": "moons"},
        "model": {"arch": "mlp"},
        "optim": {"lr": 1e-3, "warmup_images": 20_000},
        "train": {"batch_size": 256, "duration_images": 1_000_000, "ema_halflife_images": 50_000,
                  "log_every_images": 25_600, "grid_every_images": 250_000, "checkpoint_every_images": 250_000},
        "sample": {"batch_size": 5000},
        "eval": {"n_samples": 2000, "metrics": ["dist", "fid", "pr", "cas", "mem"], "every_images": 250_000,
                 "during_n": 1000, "during_metrics": ["dist"], "best_metric": "sliced_wasserstein"},
    },
    # Time series (TimeGAN's sines by default; any `data prepare --kind timeseries` folder with --data): a 1-D network
    # conditioned on observed values, so one model generates, forecasts and imputes.
    "timeseries": {
        "data": {"path": "sines"},
        "model": {"arch": "unet1d", "unet1d": {"channels": [64, 128], "attention": [False, True], "layers_per_block": 2}},
        "optim": {"lr": 1e-3, "warmup_images": 20_000},
        "train": {"batch_size": 128, "duration_images": 300_000, "ema_halflife_images": 20_000,
                  "log_every_images": 12_800, "grid_every_images": 100_000, "checkpoint_every_images": 100_000},
        "sample": {"batch_size": 1000},
        "eval": {"n_samples": 1000, "metrics": ["fid", "dist", "mem", "forecast", "impute"], "best_metric": "fid",
                 "every_images": 0},
    },
    # Tables (a generated Adult-like table by default; any `data prepare --kind tabular` folder with --data): an MLP over
    # quantile-normal numbers and one-hot categories read out through a softmax (the Adult benchmark's choice),
    # class-conditional on the target column.
    "tabular": {
        "data": {"path": "adult_like"},
        "diffusion": {"categories": "softmax"},
        "model": {"arch": "mlp", "mlp": {"width": 512, "depth": 4}},
        "optim": {"lr": 1e-3, "warmup_images": 20_000},
        "train": {"batch_size": 512, "duration_images": 2_000_000, "ema_halflife_images": 50_000,
                  "log_every_images": 25_600, "grid_every_images": 250_000, "checkpoint_every_images": 250_000},
        "sample": {"batch_size": 5000},
        "eval": {"n_samples": 2000, "metrics": ["dist", "mem"], "every_images": 0, "best_metric": "column_shape_error"},
    },
    # Text (the built-in generated sums by default; any `data prepare --kind text` folder with --data): masked
    # diffusion (MDLM) with a bidirectional token transformer.
    "text": {
        "data": {"path": "sums"},
        "model": {"arch": "token_transformer", "token_transformer": {"width": 192, "depth": 4, "heads": 4}},
        "optim": {"lr": 1e-3, "warmup_images": 10_000},
        "train": {"batch_size": 64, "duration_images": 200_000, "ema_halflife_images": 20_000,
                  "log_every_images": 6_400, "grid_every_images": 50_000, "checkpoint_every_images": 50_000},
        "sample": {"sampler": "ancestral", "steps": 128, "batch_size": 64},
        "eval": {"n_samples": 256, "metrics": ["nll", "judge", "dist", "mem"], "nll_images": 256, "nll_steps": 16, "every_images": 0,
                 "during_metrics": ["nll"], "best_metric": "nll_bits_per_dim"},
    },
    # Text-to-image (the built-in captioned digit pairs by default; any folder prepared with --captions): a DiT with a
    # caption encoder trained from scratch beside it, cross-attention and classifier-free guidance (GLIDE-style).
    "text2image": {
        "data": {"path": "digit-pairs"},
        "model": {"arch": "dit", "label_dropout": 0.1, "dit": {"width": 128, "depth": 4, "heads": 4, "patch": 2}},
        "optim": {"lr": 1e-3, "warmup_images": 10_000},
        "train": {"batch_size": 128, "duration_images": 150_000, "ema_halflife_images": 10_000,
                  "log_every_images": 5_120, "grid_every_images": 50_000, "checkpoint_every_images": 50_000},
        "sample": {"guidance": 2.0},
        "eval": {"every_images": 0},
    },
    # An autoencoder (Stable Diffusion's AutoencoderKL) for latent diffusion (`train --latent RUN`); the built-in captioned
    # digit pairs by default. Two levels: the latent is half the image's height and width, in four channels.
    "autoencoder": {
        "data": {"path": "digit-pairs"},
        "model": {"arch": "autoencoder", "autoencoder": {"channels": [32, 64], "latent_channels": 4}},
        "optim": {"lr": 1e-3, "warmup_images": 5_000},
        "train": {"batch_size": 64, "duration_images": 60_000, "ema_halflife_images": 5_000, "hflip": False,
                  "log_every_images": 3_200, "grid_every_images": 20_000, "checkpoint_every_images": 20_000},
        "eval": {"every_images": 0, "metrics": ["fid"]},
    },
    # MNIST 28x28: pass --data with a folder prepared from the IDX files; about 40 CPU minutes.
    "mnist": {
        "data": {"path": None},
        "model": {"unet": {"channels": [32, 64, 128], "attention": [False, False, True], "layers_per_block": 1}},
        "optim": {"lr": 2e-3, "warmup_images": 10_000},
        "train": {"batch_size": 128, "duration_images": 200_000, "ema_halflife_images": 20_000,
                  "log_every_images": 5_120, "grid_every_images": 50_000, "checkpoint_every_images": 50_000,
                  "posthoc_ema": [0.05, 0.10]},  # (EDM2's two profiles: `eval --ema-length` picks the length later)
        "eval": {"n_samples": 2000, "every_images": 50_000, "during_n": 500},
    },
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def validate_config(raw: dict[str, Any], origin: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {' '.join(err['msg'].split())}" for err in e.errors())
        raise UserError(f"invalid config ({origin}): {problems} (`difftrain config` lists every setting and its "
                        "description)") from None


OVERRIDE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into its key path and its YAML-parsed value."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not of the form key=value (e.g. train.batch_size=64)")
    key, value = text.split("=", 1)
    if not OVERRIDE_KEY.fullmatch(key.strip()):
        raise UserError(f"override {text!r}: {key.strip()!r} is not a setting's name (dotted words, e.g. "
                        "train.batch_size); `difftrain config` lists them")
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def load_config(preset: str | None = None, file: str | Path | None = None, overrides: list[str] = (),
                base: Config | None = None) -> Config:
    """Defaults (or `base`), then a preset, then a YAML file, then `key=value` overrides."""
    raw: dict[str, Any] = base.model_dump(mode="json") if base else {}
    preset_values = copy.deepcopy(PRESETS.get(preset or "", {}))
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
        raw = _merge(raw, preset_values) | {"preset": preset}
    if file:
        path = Path(file)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            raise UserError(f"config file {path} is not valid YAML in UTF-8: {' '.join(str(e).split())}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config file {path} must hold a mapping of sections (data, model, train, ...)")
        raw = _merge(raw, loaded)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{text}': '{k}' is not a section")
        node[keys[-1]] = value
    return validate_config(raw, file and str(file) or (preset and f"preset {preset}") or "defaults")


def save_config(config: Config, path: str | Path) -> None:
    atomic.write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def read_config(path: str | Path) -> Config:
    """Read a run's saved config.yaml."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: is {path.parent} a difftrain run directory?")
    return validate_config(yaml.safe_load(path.read_text()) or {}, str(path))


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every setting, for `difftrain config`."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += describe_fields(ann, f"{prefix}{name}.")
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((f"{prefix}{name}", repr(default), field.description or ""))
    return rows
