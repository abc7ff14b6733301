"""`difftrain sweep`: hyperparameter search with Optuna, each trial an ordinary run, pruned on the evaluation
during training."""
