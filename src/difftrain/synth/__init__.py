"""Synthetic datasets from a trained model: `difftrain synth`, filters, manifest, and the utility and privacy reports."""
