"""`difftrain export`: a run's checkpoint as a folder that stock diffusers loads and samples."""

from __future__ import annotations

from pathlib import Path

from difftrain import __version__
from difftrain.pretrained.diffusers_format import write_pipeline
from difftrain.pretrained.source import transferable
from difftrain.store.run import open_run


def export_run(run_dir: str | Path, out: str | Path, *, checkpoint: str = "latest", overwrite: bool = False, warn=print) -> Path:
    """Write the checkpoint's EMA weights (LoRA merged in) with a matching diffusers scheduler to `out`."""
    run = open_run(run_dir)
    ckpt = run.checkpoint(checkpoint, warn)
    unet = transferable(run.denoiser(ckpt).net, f"difftrain export {run_dir}")
    info = {
        "difftrain_version": __version__,
        "run": str(Path(run_dir).resolve()),
        "checkpoint": str(ckpt.path.resolve()),
        "images_seen": ckpt.images,
        "image_shape": list(run.sample_shape),
        "class_names": run.class_names or None,
        "null_label": run.num_classes if run.num_classes else None,  # the "no label" row, for classifier-free guidance
        "diffusion": run.config.diffusion.model_dump(),
        "sample": run.config.sample.model_dump(),
    }
    return write_pipeline(unet, run.config.diffusion, Path(out), info, overwrite=overwrite)
