"""Machine-learning efficiency (TabDDPM, TabSyn): one gradient-boosting recipe trained on real, synthetic and
real+synthetic rows, each tested on the same real held-out rows, to predict the target column.

Fairness as the image utilities (evaluation/utility.py): every arm fits the same model with the same settings and
seeds; only the training rows differ. Classification targets are scored by macro F1 (as TabDDPM; the minority class's
F1 and the AUC ride along as means), regression targets by R2 (table_metrics.mle).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from difftrain.evaluation.arms import seed_summary, verdict
from difftrain.evaluation.table_metrics import mle

Rows = tuple[np.ndarray, np.ndarray | None]  # codes (N, K), labels (N,) when the target is the labels


def table_utility(modality, real_train: Rows, real_test: Rows, synth: Rows, *, seeds: tuple[int, ...] = (0, 1, 2),
                  progress: Callable[[str], None] | None = None) -> dict:
    """Each arm's score on the real test rows, mean and std over `seeds`; "synthetic_helps" as arms.verdict."""
    target = modality.spec["target"]
    test = modality.frame(*real_test)
    both = (np.concatenate([real_train[0], synth[0]]),
            None if real_train[1] is None else np.concatenate([real_train[1], synth[1]]))
    arms = {"real": real_train, "synthetic": synth, "real+synthetic": both}
    results, task = {}, None
    for arm, (codes, labels) in arms.items():
        train = modality.frame(codes, labels)
        runs = []
        for seed in seeds:
            if progress is not None:
                progress(f"{arm}, seed {seed}")
            runs.append(mle(train, test, modality.frame_schema, target["name"], seed=seed))
        task = runs[0]["task"]
        metric = "f1_macro" if task == "classification" else "r2"
        results[arm] = {**seed_summary(metric, [r[metric] for r in runs]), "rows": len(codes),
                        **{f"{k}_mean": float(np.mean([r[k] for r in runs])) for k in runs[0]
                           if k not in ("task", metric) and isinstance(runs[0][k], float)}}
    metric, name = ("f1_macro", "macro F1") if task == "classification" else ("r2", "R2")
    return {
        "task": task, "model": "gradient-boosted trees (LightGBM)", "items": "rows", "metric": metric,
        "metric_name": f"{name} of {target['name']}", "target": target["name"], "seeds": list(seeds),
        "counts": {"real_train": len(real_train[0]), "synthetic": len(synth[0]), "real_test": len(real_test[0])},
        "fairness": "every arm fits the same gradient-boosting model with the same settings and seeds; only the training "
                    "rows differ; all are tested on the same real held-out rows",
        "arms": results,
        **verdict(results, metric, name, len(seeds)),
    }
