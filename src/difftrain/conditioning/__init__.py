"""Conditioners: a condition is a small mapping of tensors ({"label": (B,) class indices} today; text, observed
values and masks later). A conditioner builds it from a batch, knows its "null" value, drops it for
classifier-free guidance training, and pairs each condition with its null for guided sampling."""

from difftrain.conditioning.labels import ClassLabels, Condition

__all__ = ["ClassLabels", "Condition"]
