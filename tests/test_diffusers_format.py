"""The diffusers format: scheduler settings both ways, exported pipelines sample like difftrain, folders read back."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import (
    ConsistencyModelPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    EDMEulerScheduler,
    UNet2DModel,
)

from difftrain.config import DiffusionConfig, ModelConfig
from difftrain.diffusion import Denoiser, guided_denoiser, sample_ddim, sample_ddpm, sample_euler, sampling_sigmas
from difftrain.errors import UserError
from difftrain.modalities import modality_for
from difftrain.models import build_network
from difftrain.pretrained.diffusers_format import (
    diffusion_to_scheduler,
    is_diffusers_folder,
    read_diffusers,
    scheduler_to_diffusion,
    write_pipeline,
)
from difftrain.store.run import formulation_of
from difftrain.sampling import SamplingSpec, generate

SHAPE = (8, 8, 1)  # H, W, C
MODALITY = modality_for({"kind": "image", "shape": list(SHAPE)})
STEPS = 10  # divides num_timesteps, so DDIM's fixed stride matches the trailing timesteps
VP_EPS = DiffusionConfig(formulation="vp", prediction="eps")
VP_V = DiffusionConfig(formulation="vp", prediction="v", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
EDM_CFG = DiffusionConfig(formulation="edm", sigma_data=0.5)


def tiny_net(num_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    net = build_network(ModelConfig(channels=[32, 32], attention=[False, True], layers_per_block=1, norm_groups=8,
                                    attention_head_dim=8), MODALITY, num_classes)
    with torch.no_grad():
        # Small outputs keep EDM samples inside [-1, 1] (v: about N(0, 1); eps: about sigma_max * noise), so fewer
        # image pixels are clamped; the unclamped comparison below covers the rest.
        net.unet.conv_out.weight.mul_(0.1)
        net.unet.conv_out.bias.mul_(0.1)
    return net.eval()


def to_images(x: torch.Tensor) -> np.ndarray:
    """Samples in [-1, 1] (N, C, H, W) -> float images (N, H, W, C) in [0, 1], as diffusers' output_type="np"."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def difftrain_sample(net, diffusion: DiffusionConfig, sampler, schedule: str, seed: int, labels: list[int] | None = None,
                     *, n: int = 4, diffusers_start: bool = False) -> torch.Tensor:
    """difftrain's samples (N, C, H, W), unclamped, drawing the noise as `generate` does.

    `diffusers_start` starts from noise * sqrt(sigma_max^2 + 1), as diffusers does, instead of noise * sigma_max.
    """
    formulation = formulation_of(SimpleNamespace(diffusion=diffusion))  # it reads only config.diffusion
    generator = torch.Generator().manual_seed(seed)
    sigmas = sampling_sigmas(formulation, STEPS, schedule)
    height, width, channels = SHAPE
    noise = torch.randn(n, channels, height, width, generator=generator)
    start = (sigmas[0] ** 2 + 1).sqrt() if diffusers_start else sigmas[0]
    denoise = guided_denoiser(Denoiser(net, formulation), None if labels is None else {"label": torch.as_tensor(labels)})
    return sampler(denoise, noise * start, sigmas, generator=generator)


def diffusers_sample(pipe, seed: int, *, n: int = 4, **kwargs) -> tuple[np.ndarray, torch.Tensor]:
    """The pipeline's images (N, H, W, C) and its last sample before they were clamped into [0, 1]."""
    samples = []
    step = pipe.scheduler.step

    def recording_step(*args, **kw):
        out = step(*args, **kw)
        samples.append(out[0])
        return out

    pipe.scheduler.step = recording_step
    images = pipe(batch_size=n, generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS,
                  output_type="np", **kwargs).images
    return images, samples[-1]


def assert_samples_like_difftrain(pipe, net, diffusion, sampler, schedule: str, seed: int, labels=None) -> np.ndarray:
    """Same start: the same numbers up to float32 rounding. generate's own start: images within 2e-3."""
    kwargs = {} if labels is None else {"class_labels": labels}
    images, final = diffusers_sample(pipe, seed, **kwargs)
    same_start = difftrain_sample(net, diffusion, sampler, schedule, seed, labels, diffusers_start=True)
    # Measured: EDM bit-identical, VP ~4e-7 of the samples' size (float32 vs float64 beta tables).
    assert (same_start - final).abs().max() <= 1e-5 * final.abs().max()
    # generate starts at sigma_max * noise, diffusers at sqrt(sigma_max^2 + 1) * noise: relative 1/(2 sigma_max^2)
    # more noise, which the ODE carries to the images. Measured max differences: VP linear (sigma_max 157) 4e-5,
    # DDPM 6e-4, EDM (80) 4e-5, VP scaled_linear (sigma_max 14.6, 2.3e-3 more noise) 1.2e-3.
    ours = to_images(difftrain_sample(net, diffusion, sampler, schedule, seed, labels))
    assert ours.shape == images.shape == (4, *SHAPE)
    assert np.abs(ours - images).max() < 2e-3
    return ours


# ---- scheduler config <-> formulation settings ----


@pytest.mark.parametrize("diffusion", [VP_EPS, VP_V, DiffusionConfig(formulation="vp", prediction="v"),
                                       DiffusionConfig(formulation="vp", beta_schedule="scaled_linear", num_timesteps=500),
                                       EDM_CFG, DiffusionConfig(formulation="edm", sigma_data=0.7)])
@pytest.mark.parametrize("conditional", [False, True])
def test_scheduler_settings_round_trip(diffusion, conditional, tmp_path):
    _, scheduler_name, kwargs = diffusion_to_scheduler(diffusion, conditional)
    scheduler = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler, "EDMEulerScheduler": EDMEulerScheduler}[scheduler_name](**kwargs)
    config = {"_class_name": scheduler_name, **scheduler.config}
    back = scheduler_to_diffusion(config, tmp_path / "scheduler_config.json")
    assert back == {k: getattr(diffusion, k) for k in back}
    expected = {"formulation", "sigma_data"} if diffusion.formulation == "edm" else \
        {"formulation", "prediction", "beta_schedule", "beta_start", "beta_end", "num_timesteps"}
    assert set(back) == expected


def test_pipeline_choice():
    assert diffusion_to_scheduler(VP_EPS, False)[:2] == ("DDPMPipeline", "DDPMScheduler")
    assert diffusion_to_scheduler(VP_EPS, True)[:2] == ("ConsistencyModelPipeline", "DDIMScheduler")
    assert diffusion_to_scheduler(EDM_CFG, False)[:2] == ("ConsistencyModelPipeline", "EDMEulerScheduler")
    assert diffusion_to_scheduler(EDM_CFG, True)[:2] == ("ConsistencyModelPipeline", "EDMEulerScheduler")


def test_foreign_beta_schedulers_and_defaults(tmp_path):
    where = tmp_path / "scheduler_config.json"
    sd = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
          "num_train_timesteps": 1000, "steps_offset": 1, "skip_prk_steps": True}
    assert scheduler_to_diffusion(sd, where) == {"formulation": "vp", "prediction": "eps", "beta_schedule": "scaled_linear",
                                                 "beta_start": 0.00085, "beta_end": 0.012, "num_timesteps": 1000}
    v = {"_class_name": "EulerDiscreteScheduler", "prediction_type": "v_prediction", "beta_schedule": "linear"}
    assert scheduler_to_diffusion(v, where)["prediction"] == "v"
    # Keys an older config leaves out take diffusers' defaults.
    assert scheduler_to_diffusion({"_class_name": "DDPMScheduler", "beta_schedule": "linear"}, where)["beta_end"] == 0.02


@pytest.mark.parametrize("config, key", [
    ({"_class_name": "DDPMScheduler", "prediction_type": "sample"}, "prediction_type"),
    ({"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2"}, "beta_schedule"),
    ({"_class_name": "DDIMScheduler", "trained_betas": [0.1, 0.2]}, "trained_betas"),
    ({"_class_name": "DDIMScheduler", "beta_schedule": "linear", "rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"_class_name": "DDPMScheduler", "beta_schedule": "linear", "variance_type": "learned_range"}, "variance_type"),
    ({"_class_name": "EulerDiscreteScheduler", "beta_schedule": "linear", "timestep_type": "continuous"}, "timestep_type"),
    ({"_class_name": "EDMEulerScheduler", "prediction_type": "v_prediction"}, "prediction_type"),
    ({"_class_name": "ScoreSdeVeScheduler", "sigma_max": 1348.0}, "_class_name"),
    ({"_class_name": "CMStochasticIterativeScheduler", "sigma_max": 80.0}, "_class_name"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}, "_class_name"),
    ({"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_end": 1.5}, "beta_end"),
])
def test_refused_scheduler_settings_name_the_file_and_key(config, key, tmp_path):
    where = tmp_path / "scheduler" / "scheduler_config.json"
    with pytest.raises(UserError) as e:
        scheduler_to_diffusion(config, where)
    assert str(where) in str(e.value) and key in str(e.value)


# ---- export: stock diffusers samples what difftrain samples ----


def test_vp_eps_unconditional_samples_match_difftrain(tmp_path):
    net = tiny_net(0)
    out = write_pipeline(net.unet, VP_EPS, tmp_path / "export", {"image_shape": list(SHAPE)})
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe) is DDPMPipeline and type(pipe.scheduler) is DDPMScheduler
    assert pipe.unet.config.sample_size == 8
    # Deterministic DDIM = difftrain's ddim (eta 0) on the "uniform" VP schedule = diffusers' trailing timesteps.
    # (A random eps-network leaves the sample near sigma_max * noise, so these images are mostly clamped: the
    # unclamped comparison in assert_samples_like_difftrain carries this case.)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    assert_samples_like_difftrain(pipe, net, VP_EPS, sample_ddim, "uniform", seed=1)


def test_stock_ddpm_pipeline_is_difftrain_ddpm(tmp_path):
    net = tiny_net(0)
    pipe = DiffusionPipeline.from_pretrained(write_pipeline(net.unet, VP_EPS, tmp_path / "export", {}))
    images = pipe(batch_size=3, generator=torch.Generator().manual_seed(2), num_inference_steps=5, output_type="np").images
    assert images.shape == (3, 8, 8, 1) and np.isfinite(images).all()
    # DDPM's posterior step is difftrain's ddpm (DDIM eta=1), drawing its noise in the same order from the same generator.
    assert_samples_like_difftrain(pipe, net, VP_EPS, sample_ddpm, "uniform", seed=2)


def test_vp_v_conditional_samples_match_difftrain(tmp_path):
    net = tiny_net(3)
    info = {"class_names": ["a", "b", "c"], "null_label": 3, "image_shape": list(SHAPE)}
    pipe = DiffusionPipeline.from_pretrained(write_pipeline(net.unet, VP_V, tmp_path / "export", info))
    assert type(pipe) is ConsistencyModelPipeline and type(pipe.scheduler) is DDIMScheduler
    labels = [0, 1, 2, 3]  # 3 is the null label: unconditional
    ours = assert_samples_like_difftrain(pipe, net, VP_V, sample_ddim, "uniform", seed=3, labels=labels)
    # The labels reach the network: other labels, same noise, other images.
    other = to_images(difftrain_sample(net, VP_V, sample_ddim, "uniform", seed=3, labels=[1, 2, 0, 0]))
    assert np.abs(ours - other).max() > 1e-2


def test_edm_conditional_samples_match_difftrain(tmp_path):
    net = tiny_net(2)
    pipe = DiffusionPipeline.from_pretrained(write_pipeline(net.unet, EDM_CFG, tmp_path / "export", {"null_label": 2}))
    assert type(pipe) is ConsistencyModelPipeline and type(pipe.scheduler) is EDMEulerScheduler
    labels = [0, 1, 2, 1]
    ours = assert_samples_like_difftrain(pipe, net, EDM_CFG, sample_euler, "karras", seed=4, labels=labels)
    # The helper draws noise as `generate` does: its uint8 images are these, rounded.
    denoiser = Denoiser(net, formulation_of(SimpleNamespace(diffusion=EDM_CFG)))
    spec = SamplingSpec(sampler="euler", steps=STEPS, schedule="karras", seed=4)
    generated = generate(denoiser, MODALITY, 4, np.array(labels), spec)
    assert net.null_label == 2  # generate's unconditional label comes from the network
    assert np.abs(generated.astype(float) - ours * 255).max() <= 0.5 + 1e-3


def test_non_square_export(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(channels=[16, 16], attention=[False, False], layers_per_block=1, norm_groups=8, attention_head_dim=8)
    net = build_network(config, modality_for({"kind": "image", "shape": [8, 16, 1]}), 0)
    pipe = DiffusionPipeline.from_pretrained(write_pipeline(net.unet, VP_EPS, tmp_path / "wide", {}))
    assert pipe(batch_size=2, num_inference_steps=2, output_type="np").images.shape == (2, 8, 16, 1)
    # ConsistencyModelPipeline makes square images only: the README says so.
    conditional = build_network(config, modality_for({"kind": "image", "shape": [8, 16, 1]}), 2)
    out = write_pipeline(conditional.unet, EDM_CFG, tmp_path / "wide_edm", {})
    assert "own loop" in (out / "README.md").read_text()


def test_export_writes_metadata_and_readme_and_refuses_to_overwrite(tmp_path):
    net = tiny_net(3)
    info = {"class_names": ["a", "b", "c"], "null_label": 3, "image_shape": list(SHAPE), "source": "runs/x"}
    out = write_pipeline(net.unet, VP_EPS, tmp_path / "export", info)
    assert json.loads((out / "difftrain.json").read_text()) == info
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    readme = (out / "README.md").read_text()
    assert "class_labels" in readme and "Label 3" in readme and "ConsistencyModelPipeline" in readme
    assert net.unet.config.sample_size == (8, 8)  # the exported copy got the int; the caller's model is untouched
    with pytest.raises(UserError, match="already exists"):
        write_pipeline(net.unet, VP_EPS, out, info)
    write_pipeline(net.unet, EDM_CFG, out, {}, overwrite=True)
    assert json.loads((out / "model_index.json").read_text())["scheduler"] == ["diffusers", "EDMEulerScheduler"]
    assert not [p for p in tmp_path.iterdir() if p.name != "export"]  # no temporary folders left behind


# ---- import ----


def test_read_exported_pipeline(tmp_path):
    net = tiny_net(3)
    info = {"class_names": ["a", "b", "c"], "null_label": 3}
    out = write_pipeline(net.unet, VP_V, tmp_path / "export", info)
    assert is_diffusers_folder(out)
    found = read_diffusers(out)
    state = net.unet.state_dict()
    assert found.weights.keys() == state.keys()
    assert all(torch.equal(found.weights[k], state[k]) for k in state)
    assert found.diffusion == {k: getattr(VP_V, k) for k in found.diffusion}
    assert found.unet_config["_class_name"] == "UNet2DModel" and found.unet_config["num_class_embeds"] == 4
    assert found.info == info
    assert "ConsistencyModelPipeline" in found.origin and "DDIMScheduler" in found.origin
    # The unet folder alone finds its scheduler and difftrain.json in the pipeline around it.
    inner = read_diffusers(out / "unet")
    assert inner.diffusion == found.diffusion and inner.info == info


def test_read_bare_unet_folder(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4)
    unet.save_pretrained(tmp_path / "unet")
    assert is_diffusers_folder(tmp_path / "unet")
    found = read_diffusers(tmp_path / "unet")
    assert found.diffusion is None and found.info == {}
    assert all(torch.equal(found.weights[k], v) for k, v in unet.state_dict().items())
    # A scheduler config beside the weights gives the formulation.
    DDPMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path / "unet")
    assert read_diffusers(tmp_path / "unet").diffusion["prediction"] == "v"


def test_read_pickled_bin_weights(tmp_path):
    net = tiny_net(0)
    folder = tmp_path / "unet"
    net.unet.save_pretrained(folder, safe_serialization=False)
    assert (folder / "diffusion_pytorch_model.bin").is_file()
    found = read_diffusers(folder)
    assert all(torch.equal(found.weights[k], v) for k, v in net.unet.state_dict().items())


class Payload:
    """What a hostile .bin carries: unpickling it would call os.system (here: create a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickled_bin_that_runs_code_is_refused_without_running_it(tmp_path):
    net = tiny_net(0)
    folder = tmp_path / "unet"
    net.unet.save_pretrained(folder, safe_serialization=False)
    marker = tmp_path / "pwned"
    weights = dict(net.unet.state_dict())
    weights["payload"] = Payload(marker)
    torch.save(weights, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(UserError, match="cannot read .*diffusion_pytorch_model.bin"):
        read_diffusers(folder)
    assert not marker.exists()  # weights_only: the payload never ran


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return write_pipeline(tiny_net(0).unet, VP_EPS, tmp_path_factory.mktemp("x") / "export", {})


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_are_a_user_error(exported, tmp_path):
    out = _copy(exported, tmp_path / "broken")
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="damaged or incomplete") as e:
        read_diffusers(out)
    assert str(weights) in str(e.value)


def test_missing_weights_and_bad_json_are_user_errors(exported, tmp_path):
    out = _copy(exported, tmp_path / "noweights")
    (out / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match="diffusion_pytorch_model.safetensors is missing"):
        read_diffusers(out)
    out = _copy(exported, tmp_path / "badjson")
    (out / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(UserError, match="scheduler_config.json is not valid JSON"):
        read_diffusers(out)


def test_text_conditioned_unets_are_refused(tmp_path):
    bare = tmp_path / "sd_unet"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.30.0"}))
    assert is_diffusers_folder(bare)
    with pytest.raises(UserError, match="UNet2DConditionModel") as e:
        read_diffusers(bare)
    assert "config.json" in str(e.value)
    pipeline = tmp_path / "sd"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                           "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(UserError, match="UNet2DConditionModel"):
        read_diffusers(pipeline)
    dit = tmp_path / "dit"
    dit.mkdir()
    (dit / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"]}))
    with pytest.raises(UserError, match="no `unet`"):
        read_diffusers(dit)


def test_folder_without_diffusers_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_diffusers_folder(tmp_path)
    assert not is_diffusers_folder(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="no model_index.json or config.json"):
        read_diffusers(tmp_path)
