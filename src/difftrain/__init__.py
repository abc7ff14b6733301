"""difftrain: train, sample and evaluate diffusion models end to end."""

__version__ = "0.1.0"
