"""Text-to-image prompt following on captioned digit pairs, with compositional generalisation. Prints one JSON line.

The script writes what a user would bring: a folder of two-digit images (two digits side by side) and a captions.jsonl
of {"file_name", "text"} in varied wording ("a 3 to the left of a 7", "a 7 to the right of a 3", "3 then 7"). It
holds out some digit pairs completely: no training image shows them together. It prepares the folder with
`--captions`, trains the `text2image` preset (a DiT with a caption encoder trained from scratch, cross-attention and
classifier-free guidance), and samples for the captions of seen pairs and of held-out pairs.

Scored: prompt following, the fraction of samples whose left and right halves a digit classifier reads as the two
digits the prompt names. The classifier is difftrain's small CNN, trained on single training digits. Its floor is the
same score on real pairs made from held-out digits.

The digits are the built-in sklearn 8x8 ones (pairs are 8x16), or MNIST with --mnist DIR (pairs are 28x56).

With --latent the model diffuses in a latent space: the script first trains the `autoencoder` preset on the same folder
(its reconstructions scored by `difftrain eval`), then the text2image preset with `--latent`. The JSON then holds both
runs' training time, and the diffusion's training speed (images per second) to compare cost per step with pixel space.

Run (one job at a time on 2 cores):
    python benchmarks/text_to_image.py --out runs/bench-t2i --images 300000 --threads 2
    python benchmarks/text_to_image.py --out runs/bench-t2i-latent --latent --threads 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import common
from difftrain.data import prepare_dataset
from difftrain.evaluation.run_eval import sample_run
from difftrain.modalities.image import ImageModality
from difftrain.store.run import open_run

WORDINGS = ("a {a} to the left of a {b}", "a {b} to the right of a {a}", "{a} then {b}")


def digits(mnist: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (N, H, W) digits and labels, training and held-out."""
    if mnist is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        images, labels = np.round(d.images * 255 / 16).astype(np.uint8), d.target.astype(np.int64)
        cut = int(0.8 * len(images))
        return images[:cut], labels[:cut], images[cut:], labels[cut:]
    from difftrain.data.idx import parse_idx

    def read(name: str) -> np.ndarray:
        import gzip

        path = mnist / name if (mnist / name).is_file() else mnist / f"{name}.gz"
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return parse_idx(data, path, ndim=3 if "images" in name else 1)

    return (read("train-images-idx3-ubyte"), read("train-labels-idx1-ubyte").astype(np.int64),
            read("t10k-images-idx3-ubyte"), read("t10k-labels-idx1-ubyte").astype(np.int64))


def pair_images(images: np.ndarray, labels: np.ndarray, pairs: list[tuple[int, int]], count: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` images of two digits side by side, each of a pair drawn from `pairs`, and their (a, b)."""
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    chosen = np.array(pairs)[rng.integers(0, len(pairs), count)]
    left = np.array([rng.choice(by_digit[a]) for a in chosen[:, 0]])
    right = np.array([rng.choice(by_digit[b]) for b in chosen[:, 1]])
    return np.concatenate([images[left], images[right]], axis=2), chosen


def prompt_following(classifier, images: np.ndarray, pairs: np.ndarray) -> float:
    """The fraction of (N, H, 2W, 1) images whose halves read as the pair's two digits."""
    width = images.shape[2] // 2
    a = classifier.predict(np.ascontiguousarray(images[:, :, :width]))
    b = classifier.predict(np.ascontiguousarray(images[:, :, width:]))
    return float(((a == pairs[:, 0]) & (b == pairs[:, 1])).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, default=None, help="A folder of the MNIST IDX files (default: sklearn digits).")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-t2i"))
    parser.add_argument("--count", type=int, default=6000, help="Captioned training images to write.")
    parser.add_argument("--held-out", type=int, default=10, help="Digit pairs never shown together in training.")
    parser.add_argument("--images", type=int, default=150_000, help="Training images seen (train.duration_images).")
    parser.add_argument("--per-prompt", type=int, default=20, help="Samples per prompt.")
    parser.add_argument("--guidance", default="1,2,4")
    parser.add_argument("--set", nargs="*", default=[], help="Further config overrides of the text2image preset.")
    parser.add_argument("--latent", action="store_true", help="Diffuse in the latent space of an autoencoder trained first.")
    parser.add_argument("--autoencoder-images", type=int, default=60_000, help="With --latent: the autoencoder's training images.")
    parser.add_argument("--autoencoder-set", nargs="*", default=[], help="With --latent: config overrides of the autoencoder preset.")
    parser.add_argument("--autoencoder", type=Path, default=None, help="With --latent: this autoencoder run (trained on "
                        "the same folder: the same --mnist, --count and --seed) instead of training one.")
    parser.add_argument("--sampler", default=None, help="Sample with this sampler (default: the run's).")
    parser.add_argument("--steps", type=int, default=None, help="Sample with this many steps (default: the run's).")
    parser.add_argument("--reuse", action="store_true", help="Score the run already in --out (same --seed and data "
                        "flags) again, e.g. with another --sampler or --steps, without training it again.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common.set_threads(args.threads)
    reuse = args.reuse and (args.out / "run" / "config.yaml").is_file()
    if not reuse:
        shutil.rmtree(args.out, ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    train_x, train_y, test_x, test_y = digits(args.mnist)
    every = [(a, b) for a in range(10) for b in range(10)]
    held = [every[i] for i in rng.choice(len(every), args.held_out, replace=False)]
    seen = [p for p in every if p not in held]

    # The user's folder: PNGs and captions.jsonl. A reused run draws the same images (the random stream stays in step).
    folder = args.out / "pairs"
    images, chosen = pair_images(train_x, train_y, seen, args.count, rng)
    captions = [WORDINGS[rng.integers(len(WORDINGS))].format(a=a, b=b) for a, b in chosen]
    if not reuse:
        folder.mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:05d}.png")
        lines = [json.dumps({"file_name": f"{i:05d}.png", "text": text}) for i, text in enumerate(captions)]
        (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
        prepare_dataset(folder, args.out / "data", captions=folder / "captions.jsonl", progress=False)

    threads = [f"train.threads={args.threads}"] if args.threads else []
    autoencoder = {}
    vae = args.autoencoder or args.out / "vae"
    if args.latent and args.autoencoder is None and not reuse:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "difftrain", "train", "--preset", "autoencoder", "--data", str(args.out / "data"),
                        "--out", str(vae), f"train.duration_images={args.autoencoder_images}",
                        f"train.seed={args.seed}", *threads, *args.autoencoder_set], check=True)
        autoencoder["train_seconds"] = time.perf_counter() - start
        autoencoder["config"] = args.autoencoder_set
    if args.latent and not reuse:
        from difftrain.evaluation.run_eval import evaluate_run

        autoencoder["run"] = str(vae)
        scores = evaluate_run(vae, metrics=["fid"], seed=args.seed, data=args.out / "data")[-1]
        autoencoder |= {k: scores[k] for k in ("psnr", "psnr_resize", "ssim", "ssim_resize", "rfid", "rfid_floor") if k in scores}
        print(f"autoencoder: {autoencoder}", flush=True)
    start = time.perf_counter()
    if not reuse:
        subprocess.run([sys.executable, "-m", "difftrain", "train", "--preset", "text2image", "--data", str(args.out / "data"),
                        "--out", str(args.out / "run"), f"train.duration_images={args.images}", f"train.seed={args.seed}",
                        *(["--latent", str(vae)] if args.latent else []), *threads, *args.set], check=True)
    train_seconds = None if reuse else time.perf_counter() - start
    from difftrain.store.metrics_log import read_metrics

    speeds = [r["images_per_s"] for r in read_metrics(args.out / "run") if "images_per_s" in r]

    modality = ImageModality({"kind": "image", "shape": [train_x.shape[1], train_x.shape[2], 1]})
    classifier = modality.fit_classifier(train_x[..., None], train_y, 10, epochs=10, seed=args.seed)
    real, real_pairs = pair_images(test_x, test_y, every, 2000, rng)
    floor = prompt_following(classifier, real[..., None], real_pairs)

    run = open_run(args.out / "run")
    sampler = {"sampler": args.sampler, "steps": args.steps}
    spec0 = run.sampling_spec(args.seed, **sampler)
    results = {}
    for guidance in [float(g) for g in args.guidance.split(",")]:
        spec = run.sampling_spec(args.seed, guidance=guidance, **sampler)
        scores = {}
        for name, pairs in (("seen", seen[:10]), ("held_out", held)):
            prompts = [WORDINGS[0].format(a=a, b=b) for a, b in pairs]
            n = args.per_prompt * len(prompts)
            t0 = time.perf_counter()
            tag = f"-{spec.sampler}{spec.steps}" if args.sampler or args.steps else ""
            drawn = sample_run(args.out / "run", n, spec, args.out / f"samples-{name}-g{guidance:g}{tag}.npz", prompts=prompts)
            asked = np.array(pairs)[np.arange(n) % len(pairs)]
            scores[name] = prompt_following(classifier, drawn["images"], asked)
            scores[f"{name}_seconds"] = time.perf_counter() - t0
        results[f"{guidance:g}"] = scores
        print(f"guidance {guidance:g}: {scores}", flush=True)
    common.emit({"benchmark": "text_to_image", "digits": "mnist" if args.mnist else "sklearn", "image_shape": list(images.shape[1:]),
                 "train_images": args.count, "held_out_pairs": [f"{a}{b}" for a, b in held], "images_seen": args.images,
                 "train_seconds": train_seconds, "train_images_per_s": float(np.median(speeds)) if speeds else None,
                 "latent": {**autoencoder, "shape": list(run.modality.model_shape)} if args.latent else None,
                 "reused": reuse, "network_evaluations": spec0.network_evaluations,
                 "guided_network_evaluations": run.sampling_spec(args.seed, guidance=2.0, **sampler).network_evaluations,
                 "sampler": spec0.sampler, "steps": spec0.steps, "overrides": args.set,
                 "classifier_floor": floor, "prompt_following": results})


if __name__ == "__main__":
    main()
