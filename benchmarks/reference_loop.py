"""The reference difftrain is compared against: a plain loop of diffusers' own recipe.

It follows the defaults of diffusers' examples/unconditional_image_generation/train_unconditional.py:
DDPMScheduler (1000 steps, linear betas 1e-4..0.02, epsilon prediction), plain MSE on the noise,
AdamW (lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8), gradient norm clipped to 1,
cosine LR with 500 warm-up *steps* (diffusers.optimization.get_scheduler), EMAModel
(inv_gamma 1, power 3/4, max decay 0.9999, use_ema_warmup=True), and DDPM ancestral sampling
with the EMA weights (DDPMPipeline's loop; the scheduler's default clip_sample=True is kept).
Differences from that script, for a fair comparison with difftrain:
  - the network is difftrain's (same preset, `build_network`, same initial weights for the same
    seed); it is class-conditional through the same class embedding, always given the true
    label: no label dropout, no guidance;
  - random horizontal flip is OFF: digits are not flip-symmetric;
  - data come from a prepared dataset folder as an endless stream of shuffled epochs (a batch may
    span two epochs), not a DataLoader with a short last batch; no accelerate wrapper.
Prints one JSON line: training speed, sampling cost and every metric of `difftrain eval` on the samples.

Run (the full benchmark):
    python benchmarks/reference_loop.py --data data/digits --preset digits --images 55000 \
        --batch 128 --n-samples 1000 --sample-steps 1000 --seed 0 --out runs/bench-reference --threads 2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

import common
from difftrain.config import Config, load_config
from difftrain.evaluation.run_eval import evaluate_samples_file
from difftrain.models import build_network
from difftrain.modalities import Modality
from difftrain.sampling import balanced_labels, write_samples


@dataclass
class Reference:
    """diffusers' recipe around one UNet2DModel: noise schedule, optimizer, LR schedule, EMA."""

    unet: UNet2DModel
    scheduler: DDPMScheduler
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMAModel


def build_reference(config: Config, modality: Modality, num_classes: int, total_steps: int,
                    *, seed: int = 0, device: torch.device | str = "cpu") -> Reference:
    """The same network as difftrain's (same seed, same initial weights) with diffusers' training recipe."""
    torch.manual_seed(seed)
    unet = build_network(config.model, modality, num_classes).core().to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              prediction_type="epsilon")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500, num_training_steps=total_steps)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    ema.to(device)
    return Reference(unet, scheduler, optimizer, lr_scheduler, ema)


def train_step(ref: Reference, clean: torch.Tensor, labels: torch.Tensor | None,
               generator: torch.Generator | None = None) -> float:
    """One optimizer step of train_unconditional.py; returns the loss (a sync, as the script's per-step log)."""
    ref.unet.train()
    noise = torch.randn(clean.shape, generator=generator, device=clean.device)
    timesteps = torch.randint(0, ref.scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator,
                              device=clean.device)
    noisy = ref.scheduler.add_noise(clean, noise, timesteps)
    pred = ref.unet(noisy, timesteps, class_labels=labels).sample
    loss = F.mse_loss(pred.float(), noise.float())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.unet.parameters(), 1.0)
    ref.optimizer.step()
    ref.lr_scheduler.step()
    ref.ema.step(ref.unet.parameters())
    ref.optimizer.zero_grad(set_to_none=True)
    return loss.item()


@torch.no_grad()
def sample_ddpm(unet: UNet2DModel, scheduler: DDPMScheduler, n: int, modality: Modality,
                labels: np.ndarray | None, *, steps: int = 1000, seed: int = 0, batch_size: int = 500,
                device: torch.device | str = "cpu") -> np.ndarray:
    """DDPM ancestral sampling (Ho et al. 2020) as DDPMPipeline does it; the modality's items (images: uint8 (n, H, W, C))."""
    unet.eval()
    generator = torch.Generator(device).manual_seed(seed)
    scheduler.set_timesteps(steps)
    out = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        y = None if labels is None else torch.as_tensor(labels[start:start + count], device=device)
        x = torch.randn(count, *modality.model_shape, generator=generator, device=device)
        for t in scheduler.timesteps:
            eps = unet(x, t, class_labels=y).sample
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        out.append(modality.from_model(x))
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--preset", default="digits", help="difftrain preset that sizes the network")
    parser.add_argument("--images", type=int, required=True, help="training images (rounded up to whole batches)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's train.batch_size)")
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--sample-steps", type=int, default=1000, help="DDPM steps (1000: the full chain)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for samples.npz")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--metrics", default="fid,kid,pr,cas,mem", help="comma list, as `difftrain eval --metrics`")
    args = parser.parse_args()

    common.set_threads(args.threads)
    device = common.pick_device(args.device)
    config = load_config(args.preset)
    ds = common.load_data(args.data)
    num_classes = ds.num_classes if config.model.conditional else 0
    batch = args.batch or config.train.batch_size
    steps = -(-args.images // batch)
    ref = build_reference(config, ds.modality, num_classes, steps, seed=args.seed, device=device)
    batches = common.shuffled_batches(ds.train_data, ds.train_labels if num_classes else None, ds.modality, batch,
                                      seed=args.seed, device=device)
    noise_gen = torch.Generator(device).manual_seed(args.seed + 1)

    start = time.perf_counter()
    for _ in range(steps):
        clean, labels = next(batches)
        train_step(ref, clean, labels, noise_gen)
    train_seconds = time.perf_counter() - start

    # Sample with the EMA weights, then score like difftrain's `eval` (classifier cached first).
    ref.ema.copy_to(ref.unet.parameters())
    ds.modality.domain_classifier(ds, epochs=config.eval.classifier_epochs)
    labels = balanced_labels(args.n_samples, num_classes)
    start = time.perf_counter()
    images = sample_ddpm(ref.unet, ref.scheduler, args.n_samples, ds.modality, labels, steps=args.sample_steps,
                         seed=args.seed, batch_size=config.sample.batch_size, device=device)
    nfe = len(ref.scheduler.timesteps)
    meta = {"name": "diffusers-ddpm-reference", "sampler": "ddpm (diffusers DDPMScheduler)", "steps": args.sample_steps,
            "network_evaluations": nfe, "weights": "ema", "seed": args.seed, "images_seen": steps * batch}
    write_samples(Path(args.out) / "samples.npz", ds.modality, images, labels, meta)
    sample_seconds = time.perf_counter() - start
    # Scored as any other tool's samples file: `difftrain eval --samples FILE --data DIR`.
    scores = evaluate_samples_file(Path(args.out) / "samples.npz", args.data, metrics=args.metrics, seed=args.seed)

    common.emit({"name": "diffusers-ddpm-reference", "preset": args.preset, "batch": batch, "train_images": steps * batch,
                 "train_seconds": train_seconds, "train_images_per_s": steps * batch / train_seconds,
                 "sample_steps": args.sample_steps, "network_evaluations": nfe, "sample_seconds": sample_seconds,
                 "device": str(device), **{k: v for k, v in scores.items() if k not in ("event", "warnings")}})


if __name__ == "__main__":
    main()
