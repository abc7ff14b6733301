"""Tables: difftrain's `tabular` preset against SDV's GaussianCopula and CTGAN, trained on the same rows and scored in the
same run with the same metrics, each beside the real-data floor. Prints one JSON line per dataset.

Fidelity (column shapes and pair trends as SDMetrics, C2ST AUC, alpha-precision / beta-recall) compares generated rows
with the real training rows; the floor is the held-out real rows scored the same way, at the same count. Utility
(machine-learning efficiency): LightGBM trained on each generator's rows (as many as the real training rows), tested on
the real test rows, beside the same model trained on the real rows. Privacy: distance to the closest training record
against held-out rows at equal sizes. Adult uses its own train/test files (../shared/data/tabular/adult); TabDDPM's
published Adult F1 is 0.795 trained on synthetic rows against 0.815 on real.

Run (one dataset at a time on 2 cores; the peers need `pip install -e '.[peers]'`):
    python benchmarks/tables.py --dataset adult breast_cancer --images 2000000 --out runs/bench-tables --threads 2
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common
from difftrain.config import load_config
from difftrain.data import load_dataset
from difftrain.evaluation import table_metrics as tm
from difftrain.evaluation.run_eval import sample_run
from difftrain.modalities import prepare
from difftrain.training.trainer import train

ADULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tabular" / "adult"
ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income"]
TABDDPM_ADULT = {"f1_macro_synthetic": 0.795, "f1_macro_real": 0.815, "model": "CatBoost (tuned)", "source": "TabDDPM (Kotelnikov et al. 2023), Table 3"}


def adult_csvs(out: Path) -> tuple[Path, Path]:
    """The UCI files as CSVs with a header: '?' stays as written (prepared with --na-values ?), the test labels lose
    their trailing dot, and adult.test's first line is skipped."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, skip in (("adult.data", 0), ("adult.test", 1)):
        frame = pd.read_csv(ADULT / name, header=None, names=ADULT_COLUMNS, skipinitialspace=True, skiprows=skip)
        frame["income"] = frame["income"].str.rstrip(".")
        path = out / f"{name.replace('.', '_')}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths[0], paths[1]


def peer_rows(kind: str, real: pd.DataFrame, schema: list[dict], n: int, seed: int, epochs: int) -> tuple[pd.DataFrame, float]:
    """n rows from an SDV synthesizer fitted on `real`, with the schema's types; and the seconds it took."""
    import warnings

    from sdv.metadata import Metadata

    warnings.filterwarnings("ignore", message=".*save_to_json.*")
    from sdv.single_table import CTGANSynthesizer, GaussianCopulaSynthesizer

    start = time.perf_counter()
    metadata = Metadata.detect_from_dataframes({"rows": real}, infer_keys=None)
    for column in schema:
        sdtype = {"categorical": "categorical", "boolean": "categorical", "datetime": "datetime"}.get(column["type"], "numerical")
        metadata.update_column(column["name"], sdtype=sdtype, table_name="rows")
    if kind == "ctgan":
        import torch

        torch.manual_seed(seed)
        model = CTGANSynthesizer(metadata, epochs=epochs, enforce_min_max_values=True, verbose=False)
    else:
        model = GaussianCopulaSynthesizer(metadata, enforce_min_max_values=True)
    np.random.seed(seed)
    model.fit({"rows": real})
    rows = model.sample(num_rows=n)
    rows = rows["rows"] if isinstance(rows, dict) else rows  # SDV 2 answers {table: frame}
    return rows[list(real.columns)], time.perf_counter() - start


def fidelity(reference: pd.DataFrame, rows: pd.DataFrame, schema: list[dict], seed: int) -> dict:
    pr = tm.alpha_precision_beta_recall(reference, rows, schema)
    return {"column_shapes": round(tm.column_shapes(reference, rows, schema)["score"], 4),
            "pair_trends": round(tm.pair_trends(reference, rows, schema)["score"], 4),
            "c2st_auc": round(tm.c2st_auc(reference, rows, schema, seed=seed), 4),
            "alpha_precision": round(pr["precision"], 4), "beta_recall": round(pr["recall"], 4)}


def scores(rows: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, schema: list[dict], target: str, seed: int) -> dict:
    """Every metric of one generator's rows (as many as the training rows)."""
    count = min(len(rows), len(test))
    picked = rows.sample(n=count, random_state=seed) if len(rows) > count else rows
    utility = tm.mle(rows, test, schema, target, seed=seed)
    privacy = tm.dcr(rows, train, test, schema, seed=seed)
    return {"fidelity": fidelity(train, picked, schema, seed),
            "utility": {k: round(v, 4) if isinstance(v, float) else v for k, v in utility.items()},
            "privacy": {k: privacy[k] for k in ("synthetic_dcr_median", "holdout_dcr_median", "share_closer_to_train",
                                                "nndr_median", "exact_copies") if k in privacy}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", nargs="+", default=["adult", "breast_cancer"])
    parser.add_argument("--images", type=int, default=2_000_000, help="Training rows seen by the diffusion model.")
    parser.add_argument("--peers", nargs="*", default=["gaussian_copula", "ctgan"], choices=["gaussian_copula", "ctgan"])
    parser.add_argument("--ctgan-epochs", type=int, default=300, help="SDV's default.")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Overrides of the tabular preset, e.g. diffusion.categories=softmax.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-tables")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    common.set_threads(args.threads)
    for name in args.dataset:
        out = Path(args.out) / name
        data = out / "data"
        if name == "adult":
            if not ADULT.is_dir():
                common.emit({"name": "tables", "dataset": name, "skipped": f"{ADULT} is not here (see ../shared/data/README.md)"})
                continue
            train_csv, test_csv = adult_csvs(out / "csv")
            prepare(train_csv, data, kind="tabular", target="income", test_file=test_csv, na_values=["?"], overwrite=data.exists())
        else:
            prepare(name, data, kind="tabular", seed=args.seed, overwrite=data.exists())
        ds = load_dataset(data)
        modality = ds.modality
        target = modality.spec["target"]["name"]
        schema = modality.frame_schema
        real_train = modality.frame(ds.train_data, ds.train_labels)
        real_test = modality.frame(ds.test_data, ds.test_labels)
        config = load_config("tabular", overrides=[f"data.path={data}", f"train.duration_images={args.images}",
                                                   f"train.seed={args.seed}", *args.set])
        shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run each time
        start = time.perf_counter()
        result = train(config, out / "run", progress=False)
        seconds = {"difftrain": round(time.perf_counter() - start, 1)}
        spec = load_run_spec(out / "run", args.seed)
        start = time.perf_counter()
        drawn = sample_run(out / "run", len(real_train), spec, out / "samples.npz")
        seconds["difftrain_sampling"] = round(time.perf_counter() - start, 1)
        from difftrain.sampling import read_samples

        codes, labels, _ = read_samples(out / "samples.npz", modality)
        generated = {"difftrain": modality.frame(codes, labels)}
        del drawn
        for peer in args.peers:
            generated[peer], seconds[peer] = peer_rows(peer, real_train, schema, len(real_train), args.seed, args.ctgan_epochs)
            seconds[peer] = round(seconds[peer], 1)
        record = {"name": "tables", "dataset": name, "rows": {"train": len(real_train), "test": len(real_test)},
                  "columns": len(schema), "target": target, "overrides": args.set, "train_images": result.images, "seconds": seconds,
                  "real_floor": {"fidelity": fidelity(real_train, real_test.sample(n=min(len(real_test), len(real_train)),
                                                                                     random_state=args.seed), schema, args.seed),
                                 "utility": tm.mle(real_train, real_test, schema, target, seed=args.seed)},
                  **{gen: scores(rows, real_train, real_test, schema, target, args.seed) for gen, rows in generated.items()}}
        if name == "adult":
            record["published"] = TABDDPM_ADULT
        common.emit(record)


def load_run_spec(run_dir: Path, seed: int):
    from difftrain.store.run import open_run

    return open_run(run_dir).sampling_spec(seed)


if __name__ == "__main__":
    main()
