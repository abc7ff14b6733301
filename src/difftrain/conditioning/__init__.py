"""Conditioners: a condition is a small mapping of tensors ({"label": (B,) class indices}, {"caption": (B, T) ids},
{"observed", "mask"} of series). A conditioner builds it from a batch, knows its "null" value, drops it for classifier-free guidance
training, and pairs each condition with its null for guided sampling; `Conditions` holds a run's together."""

from difftrain.conditioning.captions import Captions
from difftrain.conditioning.conditions import Conditions, conditions_of_network, takes_captions
from difftrain.conditioning.labels import ClassLabels, Condition
from difftrain.conditioning.observed import STRATEGIES, ObservedValues

__all__ = ["Captions", "conditions_of_network", "takes_captions", "ClassLabels", "Condition", "Conditions", "ObservedValues", "STRATEGIES"]
