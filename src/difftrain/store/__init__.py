"""The run store: run directories, checkpoints, the metrics log and file hashes, readable without the training loop."""
