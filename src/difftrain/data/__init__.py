"""Data sources, validation and the prepared-dataset format."""

from difftrain.data.dataset import PreparedDataset, describe_dataset, load_dataset
from difftrain.modalities import prepare as prepare_dataset

__all__ = ["PreparedDataset", "describe_dataset", "load_dataset", "prepare_dataset"]
