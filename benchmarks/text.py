"""Text: difftrain's masked diffusion (the `text` preset) against an autoregressive transformer of the same size, trained
for the same steps on the same blocks in the same script, on Tiny Shakespeare at the character level (first 90% trains,
last 10% is held out). Prints one JSON line.

Scored: bits per character of the held-out text (masked diffusion: its bound, diffusion/masked.py; autoregressive: the
exact likelihood, each block from a start token); and the generative perplexity of masked-diffusion samples at several
sampling step counts under the autoregressive model as judge, beside the judge's perplexity of held-out text (the
floor), with distinct-4 and unigram entropy against repetition. MDLM reports its bound within ~10% of autoregressive
perplexity at equal tokens (LM1B, OpenWebText).

Run (one job at a time on 2 cores):
    python benchmarks/text.py --text ../shared/data/text/tinyshakespeare.txt --steps 3000 --out runs/bench-text --threads 2
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import common
from difftrain.config import load_config
from difftrain.diffusion import negative_elbo
from difftrain.modalities import prepare
from difftrain.modalities.text_metrics import distinct_ngrams, unigram_entropy
from difftrain.modalities.text_judge import fit_judge, token_nats
from difftrain.sampling import SamplingSpec, generate
from difftrain.store.run import open_run
from difftrain.training.performance import resolve_precision
from difftrain.training.trainer import train

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "tinyshakespeare.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=SHAKESPEARE)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-text"))
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3000, help="Optimizer steps of each model.")
    parser.add_argument("--sample-steps", default="16,64,128,256")
    parser.add_argument("--temperatures", default="1", help="Sampling temperatures, e.g. 1,0.9,0.8 (keys 'T<t>' below 1).")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--bound-draws", type=int, default=8)
    parser.add_argument("--set", nargs="*", default=[], help="Config overrides of the masked model (the baseline follows).")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common.set_threads(args.threads)
    if not args.text.is_file():
        raise SystemExit(f"{args.text}: no such file (pass --text PATH to tinyshakespeare.txt)")
    shutil.rmtree(args.out, ignore_errors=True)
    ds = prepare(args.text, args.out / "data", kind="text", tokenizer="char", block=args.block, test_fraction=0.1, progress=False)
    config = load_config("text", overrides=[f"data.path={args.out / 'data'}", f"train.duration_steps={args.steps}",
                                            "train.duration_images=null", f"train.seed={args.seed}", *args.set])
    start = time.perf_counter()
    train(config, args.out / "masked", progress=True)
    masked_seconds = time.perf_counter() - start
    run = open_run(args.out / "masked")
    denoiser = run.denoiser(run.checkpoint("latest"))
    test = ds.test_data
    generator = torch.Generator().manual_seed(args.seed)
    bound = np.concatenate([negative_elbo(denoiser, torch.as_tensor(test[i:i + 64]).long(), draws=args.bound_draws,
                                          generator=generator).numpy() for i in range(0, len(test), 64)]) / math.log(2)
    # The autoregressive baseline (difftrain's judge): the masked model's network made causal, trained with its
    # learning rate, warmup, batch, steps and precision (the same tokens and, per token, the same compute).
    start = time.perf_counter()
    ar = fit_judge(ds.train_data, ds.modality.vocab_size, config.model.token_transformer, steps=args.steps,
                   batch=config.train.batch_size, lr=config.optim.lr, seed=args.seed,
                   warmup=max(1, config.optim.warmup_images // config.train.batch_size),
                   precision=resolve_precision(config.train, "cpu"), say=lambda m: print(m, flush=True))
    ar_seconds = time.perf_counter() - start
    ar_bits = token_nats(ar, test).mean(1) / math.log(2)
    floor = token_nats(ar, test[:args.samples]).mean(1)
    save_file({k: v.contiguous() for k, v in ar.state_dict().items()}, str(args.out / "autoregressive.safetensors"))
    by_steps = {}
    for temperature in [float(t) for t in args.temperatures.split(",")]:
        for steps in [int(s) for s in args.sample_steps.split(",")]:
            spec = SamplingSpec(sampler="ancestral", steps=steps, seed=args.seed, temperature=temperature)
            t0 = time.perf_counter()
            samples = generate(denoiser, ds.modality, args.samples, None, spec, batch_size=args.samples)
            key = steps if temperature == 1 else f"{steps} T{temperature:g}"
            by_steps[key] = {"gen_perplexity": float(np.exp(token_nats(ar, samples).mean())),
                             "distinct_4": distinct_ngrams(samples, 4), "unigram_entropy": unigram_entropy(samples),
                             "seconds": time.perf_counter() - t0,
                             "example": ds.modality.decode(samples[0])[:200]}
            print(f"{key} steps: {by_steps[key]}", flush=True)
    params = sum(p.numel() for p in ar.parameters())
    common.emit({
        "benchmark": "text", "data": str(args.text), "block": args.block, "vocab": ds.modality.vocab_size,
        "train_blocks": len(ds.train_data), "test_blocks": len(test), "steps": args.steps, "batch": config.train.batch_size,
        "parameters": params, "overrides": args.set,
        "masked": {"bits_per_char": float(bound.mean()), "std_error": float(bound.std() / math.sqrt(len(bound))),
                   "bound_draws": args.bound_draws, "train_seconds": masked_seconds},
        "autoregressive": {"bits_per_char": float(ar_bits.mean()), "train_seconds": ar_seconds},
        "bound_over_ar": float(bound.mean() / ar_bits.mean()),
        "heldout_perplexity_floor": float(np.exp(floor.mean())),
        "floor_distinct_4": distinct_ngrams(test[:args.samples], 4), "floor_unigram_entropy": unigram_entropy(test[:args.samples]),
        "samples": by_steps,
    })


if __name__ == "__main__":
    main()
