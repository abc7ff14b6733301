"""Modalities: how raw data becomes tensors and how samples are written back out."""
