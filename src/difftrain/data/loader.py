"""Training batches from a prepared dataset held as one tensor on the training device."""

from __future__ import annotations

import torch

from difftrain.errors import UserError
from difftrain.modalities import image


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """A shuffled order of the n items for one epoch, a pure function of (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class ArrayBatches:
    """Batches addressed by position in the endless shuffled stream of training images.

    Position p is item order(p // n)[p % n]: the data order depends only on how many
    images were seen, so resuming and changing the process count keep it. `to_model`
    renames the dataset's labels into the model's (label i becomes to_model[i]: new classes after old ones).
    """

    def __init__(self, images, labels, *, seed: int, device: torch.device, to_model: list[int] | None = None):
        self.images = torch.as_tensor(images).to(device)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).to(device)
        if self.labels is not None and to_model is not None:
            self.labels = torch.as_tensor(to_model, dtype=torch.long, device=device)[self.labels]
        self.n = len(self.images)
        self.seed = seed
        self._cache: dict[int, torch.Tensor] = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.clear()
            self._cache[epoch] = epoch_order(self.n, self.seed, epoch).to(self.images.device)
        return self._cache[epoch]

    def items(self, positions: torch.Tensor) -> torch.Tensor:
        """Dataset indices of the items at these stream positions."""
        epochs = torch.div(positions, self.n, rounding_mode="floor")
        out = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            here = epochs == epoch
            out[here] = self._order(epoch)[positions[here] - epoch * self.n]
        return out

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (as model tensors) and labels at these stream positions."""
        idx = self.items(positions.to(self.images.device))
        return image.to_model(self.images[idx]), None if self.labels is None else self.labels[idx]

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images and labels at stream positions [start, start + count)."""
        return self.at(torch.arange(start, start + count))


class ReplayBatches:
    """A stream mixing new data with a replayed fraction f of old data, for continual learning.

    Position q is old data when floor((q+1)f) > floor(qf), so every stretch of the stream holds
    the fraction f (to one image) however it is cut into batches. Before q lie floor(qf) old
    positions, so q is old item floor(qf) or new item q - floor(qf): each stream keeps its order.
    """

    def __init__(self, new: ArrayBatches, old: ArrayBatches, fraction: float):
        if new.image_shape != old.image_shape:
            raise UserError(f"the replayed data holds {old.image_shape} images, the new data {new.image_shape}: "
                            "replay needs images of the same shape")
        if (new.labels is None) != (old.labels is None):
            raise UserError("the replayed data and the new data must both have labels or both have none")
        self.new, self.old, self.fraction = new, old, fraction
        self.image_shape = new.image_shape

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        q = torch.arange(start, start + count, dtype=torch.float64)
        before = torch.floor(q * self.fraction)
        is_old = torch.floor((q + 1) * self.fraction) > before
        x_old, y_old = self.old.at(before[is_old].long())
        x_new, y_new = self.new.at((q - before)[~is_old].long())
        mask = is_old.to(x_new.device)
        x = torch.empty((count, *x_new.shape[1:]), dtype=x_new.dtype, device=x_new.device)
        x[mask], x[~mask] = x_old, x_new
        if y_new is None:
            return x, None
        y = torch.empty(count, dtype=torch.long, device=x.device)
        y[mask], y[~mask] = y_old, y_new
        return x, y
