"""`difftrain export`: a run's checkpoint as a folder that stock diffusers loads and samples."""

from __future__ import annotations

from pathlib import Path

from diffusers import UNet2DModel

from difftrain import __version__
from difftrain.errors import UserError
from difftrain.pretrained.diffusers_format import write_pipeline
from difftrain.pretrained.stable_diffusion import write_text_to_image
from difftrain.store.run import open_run


def export_run(run_dir: str | Path, out: str | Path, *, checkpoint: str = "latest", overwrite: bool = False, warn=print) -> Path:
    """Write the checkpoint's EMA weights (LoRA merged in) with a matching diffusers scheduler to `out`."""
    run = open_run(run_dir)
    ckpt = run.checkpoint(checkpoint, warn)
    if run.captioned:  # a prompt-conditioned latent model: a Stable Diffusion folder
        return write_text_to_image(run, ckpt, Path(out), _info(run, run_dir, ckpt), overwrite=overwrite)
    if run.config.model.latent:
        raise UserError(f"{run_dir} diffuses in an autoencoder's latent space, and the stock pipelines that difftrain "
                        "exports to (DDPMPipeline, ConsistencyModelPipeline) have no VAE: only caption-conditioned latent "
                        "runs export, as a StableDiffusionPipeline")
    net = run.denoiser(ckpt).net
    if not isinstance(net.core(), UNet2DModel):
        raise UserError(f"difftrain export {run_dir}: its {type(net).__name__} network has no stock diffusers pipeline "
                        "(UNet runs export); fine-tune it further with `difftrain train --init RUN`")
    return write_pipeline(net.core(), run.config.diffusion, Path(out), _info(run, run_dir, ckpt), overwrite=overwrite)


def _info(run, run_dir, ckpt) -> dict:
    """difftrain.json: where the export came from and how the model was trained."""
    return {
        "difftrain_version": __version__,
        "run": str(Path(run_dir).resolve()),
        "checkpoint": str(ckpt.path.resolve()),
        "images_seen": ckpt.images,
        "image_shape": list(run.sample_shape),
        "class_names": run.class_names or None,
        "null_label": run.num_classes if run.num_classes else None,  # the "no label" row, for classifier-free guidance
        "diffusion": run.config.diffusion.model_dump(),
        "sample": run.config.sample.model_dump(),
        **({"latent": run.config.model.latent} if run.config.model.latent else {}),
    }
