"""A latent, caption-conditioned UNet run as a Stable Diffusion folder: stock diffusers loads it with
`DiffusionPipeline.from_pretrained` (a `StableDiffusionPipeline`) and samples from a prompt. `read_text_to_image`
reads such a folder back (difftrain's or another's) for `train --init`.

The parts, each a stock class:
- unet: the run's `UNet2DConditionModel`, as trained.
- text_encoder: a pretrained one (model.text_encoder) as it is. Else the caption encoder as a transformers
  `SiglipTextModel`: both are the same pre-LayerNorm, bidirectional transformer with learned positions and a final
  LayerNorm, so the weights carry over one to one (attention's packed q/k/v split in three) and the outputs agree to
  float rounding (tested).
- tokenizer: a pretrained encoder's own. Else the captions' characters as a `tokenizers` WordLevel model, one token
  per character, padded to the caption length. Either way the empty prompt is difftrain's null caption, so the
  pipeline's classifier-free guidance (an empty negative prompt) is difftrain's.
- vae: the run's autoencoder, whose `scaling_factor` is the run's latent scale.
- scheduler: the formulation's stock sampler (EDM: `EDMEulerScheduler`, VP: `DDIMScheduler`), as `difftrain export`
  chooses for class-conditional models (pretrained/diffusers_format.py).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from difftrain.atomic import atomic_directory
from difftrain.errors import UserError
from difftrain.models import architecture
from difftrain.pretrained.diffusers_format import (INFO, SCHEDULER_CONFIG, SCHEDULERS, diffusion_to_scheduler, read_json,
                                                   read_weights, scheduler_to_diffusion, usage)

PAD = "<pad>"


def caption_tokenizer(captions, length: int):
    """A transformers fast tokenizer that gives difftrain's caption rows: one id per character, then padding."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(captions.tokenizer.vocab) if i != captions.pad_id}
    # Unknown characters (never in a caption) read as padding: the stock pipeline has no way to refuse them.
    tokenizer = Tokenizer(models.WordLevel({**vocab, PAD: captions.pad_id}, unk_token=PAD))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, model_max_length=length, padding_side="right")


def caption_text_model(encoder: torch.nn.Module):
    """The caption encoder (models/caption_encoder.py) as a transformers SiglipTextModel with the same weights."""
    from transformers import SiglipTextConfig, SiglipTextModel

    layers = encoder.layers.layers
    length, width = encoder.position.shape
    config = SiglipTextConfig(vocab_size=encoder.embed.num_embeddings, hidden_size=width, intermediate_size=layers[0].linear1.out_features,
                              num_hidden_layers=len(layers), num_attention_heads=encoder.heads, max_position_embeddings=length,
                              hidden_act="gelu", layer_norm_eps=encoder.norm.eps, attention_dropout=0.0, projection_size=width,
                              pad_token_id=encoder.pad_id, bos_token_id=None, eos_token_id=None)
    model = SiglipTextModel(config)
    weights = {"embeddings.token_embedding.weight": encoder.embed.weight, "embeddings.position_embedding.weight": encoder.position,
               "final_layer_norm.weight": encoder.norm.weight, "final_layer_norm.bias": encoder.norm.bias}
    for i, layer in enumerate(layers):
        to = f"encoder.layers.{i}."
        attention = layer.self_attn
        for name, w, b in zip("qkv", attention.in_proj_weight.chunk(3), attention.in_proj_bias.chunk(3)):
            weights |= {f"{to}self_attn.{name}_proj.weight": w, f"{to}self_attn.{name}_proj.bias": b}
        weights |= {f"{to}self_attn.out_proj.weight": attention.out_proj.weight, f"{to}self_attn.out_proj.bias": attention.out_proj.bias,
                    f"{to}layer_norm1.weight": layer.norm1.weight, f"{to}layer_norm1.bias": layer.norm1.bias,
                    f"{to}layer_norm2.weight": layer.norm2.weight, f"{to}layer_norm2.bias": layer.norm2.bias,
                    f"{to}mlp.fc1.weight": layer.linear1.weight, f"{to}mlp.fc1.bias": layer.linear1.bias,
                    f"{to}mlp.fc2.weight": layer.linear2.weight, f"{to}mlp.fc2.bias": layer.linear2.bias}
    # (transformers 5 keeps the text transformer at the top; 4.x under .text_model)
    missing, unexpected = getattr(model, "text_model", model).load_state_dict({k: v.detach().clone() for k, v in weights.items()}, strict=False)
    assert not unexpected and set(missing) <= {"head.weight", "head.bias"}, (missing, unexpected)  # (the pooled head: unused)
    return model.eval()


def refusal(run) -> str | None:
    """Why this run cannot be a Stable Diffusion folder, or None."""
    arch = architecture(run.config.model, run.modality)
    if not run.captioned:
        return "it is not caption-conditioned"
    if arch != "unet":
        return (f"it is a model.arch={arch} run; StableDiffusionPipeline drives a UNet2DConditionModel, and no stock "
                "diffusers pipeline takes difftrain's DiT: train with model.arch=unet to export")
    if not run.config.model.latent:
        return ("it diffuses pixels; StableDiffusionPipeline decodes latents through a VAE: train in an autoencoder's "
                "latent space (`train --preset autoencoder`, then `train --latent RUN`) to export")
    h, w, _ = run.sample_shape
    if h % 8 or w % 8:
        return f"its images are {h}x{w}; StableDiffusionPipeline makes images whose height and width divide by 8"
    return None


def write_text_to_image(run, checkpoint, out: Path, info: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write `out`: the run's checkpoint as a StableDiffusionPipeline folder, atomically; `info` -> difftrain.json."""
    from diffusers import StableDiffusionPipeline

    why = refusal(run)
    if why:
        raise UserError(f"{run.path} cannot be exported as a text-to-image pipeline: {why}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: choose another output folder or pass --overwrite to replace it")
    net = run.network(checkpoint)
    captions = run.modality.captions
    _, scheduler_name, scheduler_kwargs = diffusion_to_scheduler(run.config.diffusion, conditional=True)
    vae = copy.deepcopy(run.modality.autoencoder.vae)
    vae.register_to_config(scaling_factor=run.modality.scale)
    pretrained = run.config.model.text_encoder
    if pretrained:  # the frozen pretrained text model and its tokenizer, as they are
        from difftrain.models.pretrained_text import load_text_model

        tokenizer, text_encoder = (copy.deepcopy(part) for part in load_text_model(pretrained))
    else:
        tokenizer, text_encoder = caption_tokenizer(captions, captions.length), caption_text_model(net.captions)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=copy.deepcopy(net.unet),
        scheduler=SCHEDULERS[scheduler_name](**scheduler_kwargs), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    h, w, _ = run.sample_shape
    try:
        with atomic_directory(out, overwrite) as tmp:
            pipeline.save_pretrained(tmp, safe_serialization=True)
            if not pretrained:  # the tokenizer's class by the name every transformers version has (5.x saves its new TokenizersBackend)
                index = json.loads((tmp / "model_index.json").read_text())
                index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
                (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
            (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
            (tmp / "README.md").write_text(_readme(scheduler_name, h, w, captions, pretrained))
    except FileExistsError:
        raise UserError(f"{out} appeared while exporting: choose another output folder or pass --overwrite") from None
    return out


def _readme(scheduler: str, height: int, width: int, captions, pretrained: str | None) -> str:
    steps = 32 if scheduler == "EDMEulerScheduler" else 50
    encoder = (f"the frozen pretrained text model it was trained with ({pretrained}) and its tokenizer" if pretrained else
               "difftrain's caption encoder as a `SiglipTextModel`, a character tokenizer")
    reading = ("Prompts are read by the text model's own tokenizer." if pretrained else
               f"Prompts are read a character at a time, at most {captions.length}; a character no training caption had "
               "reads as padding.")
    return "\n".join([
        "# difftrain text-to-image model (diffusers format)",
        "",
        f"A latent diffusion model trained with difftrain, saved as a `StableDiffusionPipeline` with a `{scheduler}`: a "
        f"UNet2DConditionModel, {encoder}, and the AutoencoderKL it was trained in.",
        "",
        *usage(f'images = pipe("a prompt", height={height}, width={width}, num_inference_steps={steps}, guidance_scale=2.0,',
               "              generator=torch.Generator().manual_seed(0)).images"),
        "",
        f"Pass `height={height}, width={width}`: the model was trained on images of that size. {reading}",
        f"`{INFO}` holds difftrain's metadata; diffusers ignores it.",
        ""])


# ---- import ----

CONDITION_UNET = "UNet2DConditionModel"
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
UNFED_INPUTS = ("addition_embed_type", "class_embed_type", "encoder_hid_dim", "time_cond_proj_dim", "num_class_embeds")


@dataclass
class TextToImageFolder:
    """What a Stable Diffusion style pipeline folder holds for a fine-tune: the UNet (config and weights), the
    formulation its scheduler names, and difftrain.json when difftrain exported it. Its vae/ and text_encoder/ are
    read where they are (model.latent, model.text_encoder)."""

    unet_config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    diffusion: dict[str, Any]
    info: dict[str, Any]
    origin: str


def is_text_to_image_folder(path: Path) -> bool:
    """A pipeline folder whose unet is a UNet2DConditionModel (read_text_to_image then says what else is missing)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    entry = read_json(index).get("unet")
    return isinstance(entry, list) and len(entry) == 2 and entry[1] == CONDITION_UNET


def read_text_to_image(path: Path) -> TextToImageFolder:
    path = Path(path)
    index = read_json(path / "model_index.json")
    missing = [part for part in PARTS if part not in index or not (path / part).is_dir()]
    if missing:
        raise UserError(f"--init {path}: the {index.get('_class_name', 'pipeline')} lacks {', '.join(missing)}; a text-to-image "
                        f"fine-tune needs the folder's {', '.join(PARTS)} (as StableDiffusionPipeline.save_pretrained writes them)")
    if "text_encoder_2" in index:
        raise UserError(f"--init {path}: the pipeline has a second text encoder (Stable Diffusion XL's layout); difftrain "
                        "fine-tunes pipelines with one text encoder (Stable Diffusion 1 and 2)")
    unet_file = path / "unet" / "config.json"
    unet_config = read_json(unet_file)
    if unet_config.get("_class_name") != CONDITION_UNET:
        raise UserError(f"{unet_file}: _class_name={unet_config.get('_class_name')!r}, not {CONDITION_UNET!r}")
    # Inputs of the UNet that difftrain never feeds (SDXL's added embeddings, class labels, LCM's guidance embedding).
    unfed = [f"{key}={unet_config[key]!r}" for key in UNFED_INPUTS if unet_config.get(key) is not None]
    if unfed:
        raise UserError(f"{unet_file}: {', '.join(unfed)}: this UNet takes inputs besides the prompt that difftrain "
                        "does not give it; start from a Stable Diffusion 1 or 2 style folder")
    text_config = read_json(path / "text_encoder" / "config.json")
    width = text_config.get("hidden_size", text_config.get("text_config", {}).get("hidden_size"))
    if width is not None and unet_config.get("cross_attention_dim") != width:
        raise UserError(f"{unet_file}: cross_attention_dim={unet_config.get('cross_attention_dim')!r}, but the text "
                        f"encoder's tokens are {width} wide: the UNet attends to them as they are, so the two must agree")
    scheduler_file = path / "scheduler" / SCHEDULER_CONFIG
    scheduler = read_json(scheduler_file)
    info = read_json(path / INFO) if (path / INFO).is_file() else {}
    origin = f"diffusers pipeline {path} ({index.get('_class_name', 'unnamed pipeline')}, {scheduler.get('_class_name', 'unnamed scheduler')})"
    return TextToImageFolder(unet_config=unet_config, weights=read_weights(path / "unet"),
                             diffusion=scheduler_to_diffusion(scheduler, scheduler_file), info=info, origin=origin)
