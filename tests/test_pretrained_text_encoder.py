"""A local pretrained text encoder (model.text_encoder): frozen, each caption embedded once, kept out of checkpoints,
checked by its weights' hash, and exported as it is to a stock Stable Diffusion folder. The test makes the CLIP text
model and tokenizer it loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difftrain.data import load_dataset
from difftrain.models import pretrained_text
from difftrain.store.run import open_run
from tests.test_cli import cli, difftrain
from tests.test_latent_diffusion import autoencoder_run, latent_run  # noqa: F401 (a fixture)
from tests.test_text_to_image import caption_run

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def save_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny CLIP text model and its tokenizer (one BPE token per character, no merges), saved as a user's folder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True)
    vocab = {c: i for i, c in enumerate(CHARS)} | {f"{c}</w>": len(CHARS) + i for i, c in enumerate(CHARS)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16).save_pretrained(folder)
    torch.manual_seed(seed)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                                 eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_clip(tmp_path_factory.mktemp("clip") / "clip-text")


def test_a_frozen_text_encoder_embeds_each_caption_once_and_stays_out_of_checkpoints(pairs_dir, clip_dir, tmp_path,
                                                                                      monkeypatch):
    embedded: list[str] = []
    embed = pretrained_text.PretrainedCaptionEncoder._embed
    monkeypatch.setattr(pretrained_text.PretrainedCaptionEncoder, "_embed",
                        lambda self, texts: (embedded.extend(texts), embed(self, texts))[1])
    pretrained_text._CACHE.clear()
    run = tmp_path / "dit"
    cli(*caption_run(pairs_dir, run, "--text-encoder", clip_dir, **{"train.duration_steps": 6}))
    assert embedded and len(embedded) == len(set(embedded))  # each caption once
    ds = load_dataset(pairs_dir)
    assert set(embedded) <= set(ds.modality.captions.decode(ds.train_captions)) | set(
        ds.modality.captions.decode(ds.test_captions)) | {""}  # the data's captions, and the null one
    assert open_run(run).config.model.text_encoder == str(clip_dir.resolve())

    weights = load_file(next((run / "checkpoints").glob("ckpt-*")) / "model.safetensors")
    encoder = [k for k in weights if k.startswith("captions.encoder")]
    assert encoder == ["captions.encoder.weights_sha256"]  # the fingerprint, not the weights
    cli("sample", run, "--prompt", "a 3 to the left of a 7", "--n", "2", "--steps", "2", "--out", tmp_path / "s.npz")

    # Other weights in the folder: refused by name, not silently used.
    other = save_clip(tmp_path / "other", seed=1)
    config = (run / "config.yaml").read_text().replace(str(clip_dir.resolve()), str(other))
    (run / "config.yaml").write_text(config)
    changed = difftrain("sample", run, "--prompt", "3 then 7", "--n", "2", "--out", tmp_path / "c.npz")
    assert changed.returncode == 2 and "holds other weights than the text encoder" in " ".join(changed.stderr.split())
    missing = difftrain(*caption_run(pairs_dir, tmp_path / "m", **{"model.text_encoder": tmp_path / "nowhere"}))
    assert missing.returncode == 2 and "no config.json there" in " ".join(missing.stderr.split())


def test_a_unet_on_a_pretrained_text_encoder_exports_to_a_stock_stable_diffusion_folder(pairs_dir, autoencoder_run,  # noqa: F811
                                                                                        clip_dir, tmp_path):
    from diffusers import DiffusionPipeline
    from transformers import CLIPTextModel

    run = tmp_path / "ldm"
    cli(*latent_run(pairs_dir, run, autoencoder_run, **{"model.arch": "unet"}), "--text-encoder", clip_dir)
    assert open_run(run).network(open_run(run).checkpoint()).unet.config.cross_attention_dim == 32  # CLIP's width
    cli("export", run, "--out", tmp_path / "exported")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "exported")
    assert type(pipe.text_encoder) is CLIPTextModel and type(pipe.tokenizer).__name__.startswith("CLIPTokenizer")
    images = pipe("a 3 to the left of a 7", height=8, width=16, num_inference_steps=2, guidance_scale=2.0,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 8, 16, 1) and np.isfinite(images).all()
    # The exported encoder reads a prompt as the run's did.
    run_encoder = open_run(run).network(open_run(run).checkpoint()).captions
    row = torch.from_numpy(open_run(run).modality.captions.encode(["a 3 to the left of a 7"]))
    ids = pipe.tokenizer(["a 3 to the left of a 7"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(pipe.text_encoder(ids)[0], run_encoder(row)[0], atol=1e-6)


def save_stable_diffusion(folder: Path, clip: Path) -> Path:
    """A tiny Stable Diffusion folder as another tool writes one: a VP model (scaled_linear betas, eps, PNDM), a UNet
    whose heads are fixed per level (not difftrain's fixed channels per head), a grey-scale VAE, a CLIP text encoder."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=2, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, sample_size=16)
    scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                              steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel.from_pretrained(clip), tokenizer=CLIPTokenizer.from_pretrained(clip),
                            unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def test_a_stable_diffusion_folder_from_elsewhere_fine_tunes_as_it_is(pairs_dir, clip_dir, tmp_path):
    folder = save_stable_diffusion(tmp_path / "sd", clip_dir)
    run = tmp_path / "tuned"
    # (without the tiny UNet settings of caption_run: the folder's UNet is what it is)
    cli(*[a for a in caption_run(pairs_dir, run, "--init", folder, "--no-progress") if not str(a).startswith("model.unet.")])
    init = json.loads((run / "init.json").read_text())
    assert init["matched"] > 0 and not (init["missing"] or init["unexpected"] or init["reshaped"])
    config = open_run(run).config
    assert (config.diffusion.formulation, config.diffusion.prediction, config.diffusion.beta_schedule) == ("vp", "eps", "scaled_linear")
    assert config.model.latent_scale == pytest.approx(0.18215)  # the folder's scaling_factor
    assert config.model.unet.unet_options == {"attention_head_dim": 2}  # 2 heads at every level: kept as the folder's
    net = open_run(run).network(open_run(run).checkpoint())
    assert [b.attentions[0].transformer_blocks[0].attn1.heads for b in net.unet.down_blocks if hasattr(b, "attentions")] == [2]
    cli("sample", run, "--prompt", "a 3 to the left of a 7", "--n", "2", "--steps", "3", "--out", tmp_path / "s.npz")
    assert np.load(tmp_path / "s.npz")["images"].shape == (2, 8, 16, 1)

    # A folder that is no text-to-image pipeline, or lacks a part, is refused by name.
    (folder / "tokenizer").rename(tmp_path / "tokenizer")
    refused = difftrain(*caption_run(pairs_dir, tmp_path / "r", "--init", folder))
    assert refused.returncode == 2 and "lacks tokenizer" in " ".join(refused.stderr.split())
    plain = difftrain("train", "--preset", "digits", "--out", tmp_path / "p", "--init", folder / "unet")
    assert plain.returncode == 2 and "UNet2DConditionModel" in " ".join(plain.stderr.split())
