"""Training batches from a prepared dataset held as one tensor on the training device."""

from __future__ import annotations

import torch

from difftrain.modalities import image


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """A shuffled order of the n items for one epoch, a pure function of (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class ArrayBatches:
    """Batches addressed by position in the endless shuffled stream of training images.

    Position p is item order(p // n)[p % n]: the data order depends only on how many
    images were seen, so resuming and changing the process count keep it.
    """

    def __init__(self, images, labels, *, seed: int, device: torch.device):
        self.images = torch.as_tensor(images).to(device)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).to(device)
        self.n = len(self.images)
        self.seed = seed
        self._cache: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {epoch: epoch_order(self.n, self.seed, epoch).to(self.images.device)}
        return self._cache[epoch]

    def indices(self, start: int, count: int) -> torch.Tensor:
        parts, pos = [], start
        while pos < start + count:
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, start + count - pos)
            parts.append(self._order(epoch)[offset: offset + take])
            pos += take
        return torch.cat(parts)

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (as model tensors) and labels at stream positions [start, start + count)."""
        idx = self.indices(start, count)
        x = image.to_model(self.images[idx])
        return x, None if self.labels is None else self.labels[idx]
