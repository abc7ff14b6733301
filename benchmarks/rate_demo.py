"""A rating study run end to end with machine raters, for the docs: the page's screenshot and the results plot.

`difftrain rate create` on the given runs, `rate serve`, a screenshot of the page in chromium (Playwright), then
raters that see only what a person sees (the page's API: question and PNGs) and answer with the dataset's own
classifier: the image the classifier finds more like the asked class wins a pair; an image is called real when the
classifier is at least `--real-confidence` sure of some class. Each rater answers with its own noise, so raters do not
agree perfectly. Then `difftrain rate results`. These raters stand in for people to show the outputs; they are
not human judgements. Prints one JSON line.

    python benchmarks/rate_demo.py --runs runs/a runs/b runs/c --out /tmp/rate-demo --n 60 --raters 4 \
        --screenshot ../docs/img/rate-page.png --plot ../docs/img/rate-ranking.png
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

import common
from rate_load import free_port, start_server


def difftrain(*args) -> None:
    result = subprocess.run([sys.executable, "-m", "difftrain", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"difftrain {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")


def decode(png: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The item back from its preview: a 1-pixel border around it, enlarged by nearest neighbour."""
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    h, w = shape[:2]
    scale = pixels.shape[0] // (h + 2)
    item = pixels[scale * np.arange(1, h + 1)][:, scale * np.arange(1, w + 1)]
    return item.reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--raters", type=int, default=4)
    parser.add_argument("--per-rater", type=int, default=150)
    parser.add_argument("--real-confidence", type=float, default=0.95)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    from difftrain.data import load_dataset
    from difftrain.store.run import open_run

    shutil.rmtree(args.out, ignore_errors=True)
    difftrain("rate", "create", "--runs", *args.runs, "--n", args.n, "--raters", args.raters, "--per-rater", args.per_rater,
              "--out", args.out)
    data = load_dataset(open_run(args.runs[0]).dataset["path"])
    classifier, _ = data.modality.domain_classifier(data, epochs=open_run(args.runs[0]).config.eval.classifier_epochs)
    classes = {name: i for i, name in enumerate(data.class_names)}
    port = free_port()
    server = start_server(args.out, port)
    base = f"http://127.0.0.1:{port}"
    tokens = [r["token"] for r in json.loads((args.out / "raters.json").read_text())]
    try:
        if args.screenshot:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 820, "height": 620})
                page.goto(f"{base}/?t={tokens[0]}")
                page.wait_for_selector("#items img")
                answered = 0
                while page.locator("#items img").count() != 2:  # a pair shows the page best
                    page.locator("#answers button").first.click()
                    answered += 1
                    page.wait_for_function(f"document.getElementById('count').textContent.startsWith('{answered} of')")
                page.wait_for_timeout(300)
                args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.screenshot))
                browser.close()
        for r, token in enumerate(tokens):
            rng = np.random.default_rng(r)
            noise = 0.05 + 0.1 * r  # each rater's own: a larger one answers more at random
            with httpx.Client(base_url=base, timeout=60, params={"t": token}) as client:
                while not (trial := client.get("/api/next").json())["done"]:
                    items = np.stack([decode(client.get(url).content, data.sample_shape) for url in trial["items"]])
                    probs = classifier.probabilities(items)
                    if trial["kind"] == "real_fake":
                        answer = "real" if probs.max() + rng.normal(0, noise) >= args.real_confidence else "generated"
                    else:
                        asked = trial["question"].split("“")[-1].split("”")[0]
                        p = probs[:, classes[asked]] + rng.normal(0, noise, 2)
                        answer = trial["answers"][int(p.argmax())] if trial["kind"] == "pair" else str(int(1 + round(4 * np.clip(p[0], 0, 1))))
                    client.post("/api/vote", json={"position": trial["position"], "answer": answer}).raise_for_status()
    finally:
        server.terminate()
        server.wait()
    difftrain("rate", "results", args.out)
    if args.plot:
        shutil.copyfile(args.out / "ranking.png", args.plot)
    r = json.loads((args.out / "results.json").read_text())
    common.emit({"benchmark": "rate_demo", "runs": r["runs"], "votes": r["votes"], "excluded": r["excluded_raters"],
                 "bradley_terry": r["bradley_terry"], "hype": r["hype"], "agreement": r["agreement"]})


if __name__ == "__main__":
    main()
