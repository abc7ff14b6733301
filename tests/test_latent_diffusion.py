"""Latent diffusion: an autoencoder trained by difftrain (diffusers' AutoencoderKL) and scored by its reconstructions,
then a diffusion model in its latent space, the images encoded once; what a user sees stays images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from difftrain.config import AutoencoderConfig
from difftrain.data import load_dataset
from difftrain.evaluation.reconstruction import psnr, ssim
from difftrain.models.autoencoder import build_autoencoder
from difftrain.store.run import open_run
from tests.conftest import tiny_overrides
from tests.test_cli import cli, difftrain
from tests.test_text_to_image import caption_run

AUTOENCODER = {"model.autoencoder.channels": "[16, 32]", "model.autoencoder.norm_groups": 8, "train.duration_steps": 4,
               "train.grid_every_images": 32}


@pytest.fixture(scope="module")
def autoencoder_run(pairs_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "vae"
    cli("train", "--preset", "autoencoder", "--out", run, "--no-progress", *tiny_overrides(pairs_dir, **AUTOENCODER))
    return run


def latent_run(pairs_dir: Path, run: Path, autoencoder: Path, **extra) -> list[str]:
    return caption_run(pairs_dir, run, "--latent", autoencoder, "--no-progress", **extra)


def test_reconstruction_metrics_against_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 255, (3, 8, 16, 1), dtype=np.uint8)
    assert psnr(a + 1, a) == pytest.approx(10 * math.log10(255 ** 2))  # an error of one level everywhere: MSE 1
    assert psnr(a, a) == pytest.approx(10 * math.log10(255 ** 2 * 12))  # a copy: the 8-bit quantisation limit
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(255 - a, a) < 0  # the negative image anticorrelates
    assert ssim(np.full_like(a, 128), a) < 0.05


def test_the_autoencoder_halves_each_side_per_level_and_refuses_sizes_it_cannot():
    net = build_autoencoder(AutoencoderConfig(channels=[16, 32, 32], norm_groups=8), (1, 28, 56), 0)
    assert net.latent_shape((1, 28, 56)) == (4, 7, 14)
    x = torch.rand(2, 1, 28, 56) * 2 - 1
    assert net.encode(x).shape == (2, 4, 7, 14) and net.reconstruct(x).shape == x.shape
    with pytest.raises(Exception, match="do not divide by 4"):
        build_autoencoder(AutoencoderConfig(channels=[16, 32, 32], norm_groups=8), (1, 8, 10), 0)


def test_train_an_autoencoder_score_it_and_refuse_to_sample_from_it(pairs_dir, autoencoder_run, tmp_path):
    config = open_run(autoencoder_run).config
    assert config.model.arch == "autoencoder" and not config.model.conditional  # the data's captions and classes unused
    assert list((autoencoder_run / "samples").glob("grid-*.png"))  # held-out images beside their reconstructions

    result = cli("eval", autoencoder_run, "--json")
    [record] = json.loads(result.stdout[result.stdout.index("["):])
    assert {"psnr", "psnr_resize", "ssim", "ssim_resize", "rfid", "rfid_floor"} <= set(record)
    assert record["n_reconstructed"] == len(load_dataset(pairs_dir).test_data)
    assert record["rfid"] >= 0 and record["rfid_floor"] >= 0
    assert "| PSNR, dB |" in (autoencoder_run / "README.md").read_text()

    drawn = difftrain("sample", autoencoder_run, "--n", "2", "--out", tmp_path / "s.npz")
    assert drawn.returncode == 2 and "it encodes and decodes images and draws none" in " ".join(drawn.stderr.split())
    during = difftrain("train", "--preset", "autoencoder", "--out", tmp_path / "v", *tiny_overrides(
        pairs_dir, **{**AUTOENCODER, "eval.every_images": 32}))
    assert during.returncode == 2 and "an autoencoder draws no samples" in " ".join(during.stderr.split())


def test_latent_diffusion_trains_on_latents_encoded_once_and_samples_images(pairs_dir, autoencoder_run, tmp_path):
    run = tmp_path / "ldm"
    cli(*latent_run(pairs_dir, run, autoencoder_run))
    spec = json.loads((run / "dataset.json").read_text())["modality"]
    assert spec["kind"] == "image" and spec["shape"] == [8, 16, 1] and spec["latent"]["shape"] == [4, 4, 8]
    # Pinned to the autoencoder's checkpoint, with a copy of its weights in the run.
    assert open_run(run).config.model.latent == str(next((autoencoder_run / "checkpoints").glob("ckpt-*")).resolve())
    assert (run / "autoencoder.safetensors").is_file()
    codes = np.load(run / "latents" / "train.npy")
    assert codes.shape == (len(load_dataset(pairs_dir).train_data), 4, 4, 8)
    assert np.sqrt(np.mean(codes.astype(np.float64) ** 2)) == pytest.approx(1.0, abs=1e-4)  # scaled to unit RMS
    assert open_run(run).config.diffusion.sigma_data == 1.0

    # The model tensors are the autoencoder's latents, scaled: decoding them is the autoencoder's reconstruction.
    modality = open_run(run).modality
    images = load_dataset(pairs_dir).test_data[:4]
    x = torch.from_numpy(images)
    vae = open_run(autoencoder_run).network(open_run(autoencoder_run).checkpoint())
    with torch.no_grad():
        expected = ((vae.reconstruct(x.permute(0, 3, 1, 2).float() / 127.5 - 1) + 1) * 127.5).round().clamp(0, 255)
    assert np.array_equal(modality.from_model(modality.to_model(x)), expected.to(torch.uint8).permute(0, 2, 3, 1).numpy())

    # What a user gets is images: the samples file, and evaluation against the image data.
    cli("sample", run, "--prompt", "a 3 to the left of a 7", "--n", "3", "--steps", "2", "--out", tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (3, 8, 16, 1)
    result = cli("eval", run, "--n", "40", "--metrics", "fid", "--steps", "2", "--json")
    [record] = json.loads(result.stdout[result.stdout.index("["):])
    assert record["fid"] >= 0 and 0 <= record["label_agreement"] <= 1
    nll = difftrain("eval", run, "--metrics", "nll")
    assert nll.returncode == 2 and "leave nll out" in " ".join(nll.stderr.split())

    # Resumed, it reads its latents and its autoencoder copy back, even once the autoencoder run is gone.
    away = autoencoder_run.with_name("away")
    autoencoder_run.rename(away)
    try:
        before = (run / "latents" / "train.npy").stat().st_mtime_ns
        cli("train", "--out", run, "--resume", "--no-progress", "train.duration_steps=6")
        assert (run / "latents" / "train.npy").stat().st_mtime_ns == before
        assert open_run(run).checkpoint().info["step"] == 6
        cli("sample", run, "--prompt", "a 3 to the left of a 7", "--n", "2", "--steps", "2", "--out", tmp_path / "t.npz")
    finally:
        away.rename(autoencoder_run)

    # A changed copy is refused, not decoded with.
    weights = run / "autoencoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    broken = difftrain("sample", run, "--prompt", "a 1 to the left of a 2", "--n", "2", "--out", tmp_path / "b.npz")
    assert broken.returncode == 2 and "is not the autoencoder this run was trained with" in " ".join(broken.stderr.split())


def test_latent_needs_an_autoencoder_run_of_the_same_images(pairs_dir, autoencoder_run, tmp_path, digits_dir):
    other = tmp_path / "pixel"
    cli(*latent_run(pairs_dir, tmp_path / "ok", autoencoder_run))  # (the fixture's run, for the next refusals)
    not_vae = difftrain(*latent_run(pairs_dir, tmp_path / "x", tmp_path / "ok"))
    assert not_vae.returncode == 2 and "not an autoencoder" in " ".join(not_vae.stderr.split())
    missing = difftrain(*latent_run(pairs_dir, other, tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is no difftrain run" in " ".join(missing.stderr.split())
    wrong = difftrain("train", "--out", tmp_path / "d", "--latent", autoencoder_run, *tiny_overrides(digits_dir))
    assert wrong.returncode == 2 and "train an autoencoder on images of this size" in " ".join(wrong.stderr.split())
    mirrored = difftrain(*latent_run(pairs_dir, tmp_path / "h", autoencoder_run, **{"train.hflip": "true"}))
    assert mirrored.returncode == 2 and "set train.hflip=false with --latent" in " ".join(mirrored.stderr.split())
    again = difftrain("train", "--out", tmp_path / "ok", "--resume", "--latent", autoencoder_run)
    assert again.returncode == 2 and "leave --latent out with --resume" in " ".join(again.stderr.split())


# ---- export: a Stable Diffusion folder that stock diffusers samples from a prompt ----


@pytest.fixture(scope="module")
def latent_unet_run(pairs_dir, autoencoder_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "ldm-unet"
    cli(*latent_run(pairs_dir, run, autoencoder_run, **{"model.arch": "unet"}))
    return run


def test_the_caption_encoder_and_tokenizer_carry_over_exactly(latent_unet_run):
    from difftrain.pretrained.stable_diffusion import caption_text_model, caption_tokenizer

    run = open_run(latent_unet_run)
    encoder = run.network(run.checkpoint()).captions
    captions = run.modality.captions
    prompts = ["a 3 to the left of a 7", "1 then 2", ""]
    rows = captions.encode(prompts)
    tokenizer = caption_tokenizer(captions, captions.length)
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    assert np.array_equal(ids.numpy(), rows)  # the empty prompt (the pipeline's negative one) is the null caption
    assert (rows[2] == captions.pad_id).all()
    with torch.no_grad():
        assert torch.allclose(caption_text_model(encoder)(ids)[0], encoder(torch.from_numpy(rows))[0], atol=1e-5)


def test_a_latent_captioned_unet_exports_to_stable_diffusion_and_samples_as_difftrain(latent_unet_run, tmp_path):
    from diffusers import DiffusionPipeline, EDMEulerScheduler, StableDiffusionPipeline

    from difftrain.conditioning import conditions_of_network
    from difftrain.diffusion import guided_denoiser, sample_euler, sampling_sigmas

    out = tmp_path / "exported"
    cli("export", latent_unet_run, "--out", out)
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe) is StableDiffusionPipeline and type(pipe.scheduler) is EDMEulerScheduler
    assert "height=8, width=16" in (out / "README.md").read_text()

    steps, seed, guidance = 6, 3, 2.0
    final = []
    step = pipe.scheduler.step
    pipe.scheduler.step = lambda *a, **k: final.append(step(*a, **k)) or final[-1]
    images = pipe("a 3 to the left of a 7", height=8, width=16, num_inference_steps=steps, guidance_scale=guidance,
                  num_images_per_prompt=2, output_type="np", generator=torch.Generator().manual_seed(seed)).images
    assert images.shape == (2, 8, 16, 1)

    # difftrain's Euler sampler with its guidance, from the pipeline's start (noise * sqrt(sigma_max^2 + 1)).
    run = open_run(latent_unet_run)
    denoiser = run.denoiser(run.checkpoint())
    sigmas = sampling_sigmas(denoiser.formulation, steps, "karras")
    noise = torch.randn(2, *run.modality.model_shape, generator=torch.Generator().manual_seed(seed))
    caption = torch.from_numpy(run.modality.captions.encode(["a 3 to the left of a 7"] * 2))
    conditioner = conditions_of_network(denoiser.net)
    guided = guided_denoiser(denoiser, conditioner.sampling(caption), guidance, conditioner.null_like)
    ours = sample_euler(guided, noise * (sigmas[0] ** 2 + 1).sqrt(), sigmas, generator=torch.Generator())
    theirs = final[-1][0]
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()
    assert np.abs(run.modality.from_model(ours).astype(np.float32) / 255 - images).max() <= 0.5 / 255 + 1e-3


def test_exports_that_no_stock_pipeline_can_sample_are_refused(pairs_dir, autoencoder_run, tmp_path):
    dit = tmp_path / "ldm-dit"
    cli(*latent_run(pairs_dir, dit, autoencoder_run))
    refused = difftrain("export", dit, "--out", tmp_path / "e1")
    assert refused.returncode == 2 and "no stock diffusers pipeline takes difftrain's DiT" in " ".join(refused.stderr.split())
    assert not (tmp_path / "e1").exists()  # (pixel-space runs: tests/test_text_to_image.py)


def test_the_doctor_probes_captioned_and_latent_configs(pairs_dir, autoencoder_run, tmp_path):
    probes = {}
    for name, flags in (("pixels", []), ("latents", [f"model.latent={autoencoder_run}"])):
        args = caption_run(pairs_dir, tmp_path / name)[5:]  # (the settings, without `train --preset ... --out RUN`)
        result = cli("doctor", "--preset", "text2image", "--out", tmp_path / name, *args, *flags, "--json")
        report = json.loads(result.stdout)
        assert report["ok"] and report["probe"]["images_per_second"] > 0
        probes[name] = report["probe"]
    # The latent network reads 4 channels of 4x8 latents: patches of another size than the pixels' 1 channel of 8x16.
    assert probes["latents"]["parameters"] != probes["pixels"]["parameters"]
    result = cli("doctor", "--preset", "autoencoder", "--out", tmp_path / "vae", *tiny_overrides(pairs_dir, **AUTOENCODER), "--json")
    assert json.loads(result.stdout)["ok"]


# ---- fine-tuning a text-to-image pipeline folder: train --init FOLDER, with LoRA ----


def test_init_from_an_exported_folder_starts_as_its_source_and_lora_fine_tunes_it(pairs_dir, latent_unet_run, tmp_path):
    from diffusers import DiffusionPipeline

    from difftrain.evaluation.run_eval import sample_run

    exported = tmp_path / "exported"
    cli("export", latent_unet_run, "--out", exported)
    # One step at a learning rate ~1e-11 (a warm-up of 10^9 images): the fine-tune's network is its source's.
    start = tmp_path / "start"
    cli(*caption_run(pairs_dir, start, "--init", exported, "--no-progress",
                     **{"train.duration_steps": 1, "optim.warmup_images": 10**9}))
    init = json.loads((start / "init.json").read_text())
    assert init["matched"] > 0 and not (init["missing"] or init["unexpected"] or init["reshaped"])
    config = open_run(start).config
    assert config.model.arch == "unet" and config.model.text_encoder == str(exported.resolve())
    assert config.model.latent == str((exported / "vae").resolve())
    assert config.model.latent_scale == pytest.approx(open_run(latent_unet_run).modality.scale)  # not measured anew
    # The run's own config agrees with its source (a resume before the first checkpoint, the doctor, --config).
    from difftrain.pretrained.source import config_for_source, open_pretrained

    assert config_for_source(config, open_pretrained(exported)).model == config.model
    prompts = ["a 3 to the left of a 7", "1 then 2"]
    spec = open_run(latent_unet_run).sampling_spec(5, steps=4, guidance=2.0)
    source = sample_run(latent_unet_run, 4, spec, tmp_path / "a.npz", prompts=prompts)["images"]
    tuned = sample_run(start, 4, spec, tmp_path / "b.npz", prompts=prompts)["images"]
    assert np.abs(source.astype(int) - tuned.astype(int)).max() <= 1  # the same model, through the folder's parts

    # LoRA on the folder's UNet: only the adapters train; the result samples and exports as a pipeline again.
    lora = tmp_path / "lora"
    cli(*caption_run(pairs_dir, lora, "--init", exported, "--no-progress", **{"finetune.lora_rank": 4}))
    init = json.loads((lora / "init.json").read_text())
    assert 0 < init["trainable_parameters"] < init["parameters"] / 5
    cli("sample", lora, "--prompt", "3 then 7", "--n", "2", "--steps", "2", "--out", tmp_path / "s.npz")
    cli("export", lora, "--out", tmp_path / "again")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "again")
    images = pipe("3 then 7", height=8, width=16, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 8, 16, 1) and np.isfinite(images).all()


def test_init_from_a_text_to_image_run_starts_as_its_source(pairs_dir, latent_unet_run, tmp_path):
    from difftrain.evaluation.run_eval import sample_run

    start = tmp_path / "start"
    cli(*caption_run(pairs_dir, start, "--init", latent_unet_run, "--no-progress",
                     **{"train.duration_steps": 1, "optim.warmup_images": 10**9}))
    init = json.loads((start / "init.json").read_text())
    assert init["matched"] > 0 and not (init["missing"] or init["unexpected"] or init["reshaped"])
    characters = open_run(latent_unet_run).modality.captions.vocab_size
    assert init["captions"] == f"{characters} characters kept"  # the same data: every character, the same length
    forgetting = json.loads((start / "forgetting.json").read_text())  # the source's held-out captions, as the run reads them
    assert forgetting["old_before"]["label_agreement"] >= 0 and "fid" in forgetting["old_after"]
    source, config = open_run(latent_unet_run).config, open_run(start).config
    assert config.model.arch == "unet" and config.model.latent == source.model.latent
    assert config.model.latent_scale == pytest.approx(open_run(latent_unet_run).modality.scale)
    prompts = ["a 3 to the left of a 7", "1 then 2"]
    spec = open_run(latent_unet_run).sampling_spec(5, steps=4, guidance=2.0)
    before = sample_run(latent_unet_run, 4, spec, tmp_path / "a.npz", prompts=prompts)["images"]
    after = sample_run(start, 4, spec, tmp_path / "b.npz", prompts=prompts)["images"]
    assert np.abs(before.astype(int) - after.astype(int)).max() <= 1


def test_init_from_a_folder_refuses_what_contradicts_it(pairs_dir, digits_dir, latent_unet_run, autoencoder_run, tmp_path):
    exported = tmp_path / "exported"
    cli("export", latent_unet_run, "--out", exported)
    cases = [
        (caption_run(pairs_dir, tmp_path / "a", "--init", exported, **{"model.arch": "dit"}),
         "model.arch=dit contradicts --init"),
        (caption_run(pairs_dir, tmp_path / "b", "--init", exported, "--latent", autoencoder_run),
         "model.latent="),
        (caption_run(pairs_dir, tmp_path / "c", "--init", exported, **{"model.unet.layers_per_block": 2}),
         "model.unet.layers_per_block=2 contradicts --init"),
        (["train", "--preset", "digits", "--out", tmp_path / "e", "--init", exported, *tiny_overrides(digits_dir)],
         "is a text-to-image model, and this run reads no captions"),
    ]
    for args, message in cases:
        refused = difftrain(*args)
        assert refused.returncode == 2 and message in " ".join(refused.stderr.split()), refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (tmp_path / "e" / "latents").exists()  # refused before encoding anything
