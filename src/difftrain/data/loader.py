"""Training batches of any modality from a prepared dataset held as one tensor on the training device.

No worker processes and no host-device round trips: a batch is a slice of a shuffled order
already on the device, gathered and converted (and augmented) there. A memory-mapped dataset (text corpora larger
than memory) is the exception: its rows are read from disk batch by batch, in the same order.
"""

from __future__ import annotations

import numpy as np
import torch

from difftrain.errors import UserError


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """A shuffled order of the n items for one epoch, a pure function of (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def epoch_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Which of the epoch's n stream positions are mirrored (bool), a pure function of (seed, epoch)."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch + 500_009)) < 0.5


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on the device; to a GPU through pinned memory, so the copy does not wait for the GPU."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class ArrayBatches:
    """Batches addressed by position in the endless shuffled stream of training items.

    Position p is item order(p // n)[p % n]: the data order depends only on how many
    images were seen, so resuming and changing the process count keep it. `to_model`
    renames the dataset's labels into the model's (label i becomes to_model[i]: new classes after old ones).
    With `hflip`, position p is mirrored left-right when flips(p // n)[p % n]: as reproducible as the order.
    """

    def __init__(self, data, labels, modality, *, seed: int, device: torch.device, to_model: list[int] | None = None,
                 hflip: bool = False):
        self.modality = modality
        if hflip:
            modality.mirror(torch.zeros(1, *modality.model_shape))  # refuses data without left and right
        # A memory-mapped array (a corpus larger than memory) stays on disk: each batch reads its own rows.
        self.streamed = isinstance(data, np.memmap)
        self.device = torch.device(device)
        self.data = data if self.streamed else torch.as_tensor(data).to(device)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).to(device)
        if self.labels is not None and to_model is not None:
            self.labels = torch.as_tensor(to_model, dtype=torch.long, device=device)[self.labels]
        self.n = len(self.data)
        self.seed, self.hflip = seed, hflip
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def _epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The epoch's order and mirror flags, on the device."""
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.clear()
            flips = _to_device(epoch_flips(self.n, self.seed, epoch), self.device) if self.hflip else None
            self._cache[epoch] = _to_device(epoch_order(self.n, self.seed, epoch), self.device), flips
        return self._cache[epoch]

    def _slices(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dataset indices and mirror flags at positions [start, start + count), cut from the epochs' orders."""
        idx, flips = [torch.empty(0, dtype=torch.long, device=self.device)], []
        position, end = start, start + count
        while position < end:
            epoch, offset = divmod(position, self.n)
            take = min(self.n - offset, end - position)
            order, flip = self._epoch(epoch)
            idx.append(order[offset:offset + take])
            if flip is not None:
                flips.append(flip[offset:offset + take])
            position += take
        return torch.cat(idx), torch.cat(flips) if flips else None

    def _take(self, idx: torch.Tensor, flips: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.streamed:
            rows = torch.from_numpy(np.ascontiguousarray(self.data[idx.cpu().numpy()]))
            x = self.modality.to_model(_to_device(rows, self.device))
        else:
            x = self.modality.to_model(self.data[idx])
        if flips is not None and len(flips):
            x = torch.where(flips.view(-1, *[1] * (x.ndim - 1)), self.modality.mirror(x), x)
        return x, None if self.labels is None else self.labels[idx]

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (as model tensors) and labels at stream positions [start, start + count)."""
        return self._take(*self._slices(start, count))

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images and labels at any stream positions (tests and tools; training uses `batch`)."""
        positions = positions.cpu()
        epochs = torch.div(positions, self.n, rounding_mode="floor")
        idx = torch.empty_like(positions)
        flips = torch.zeros(len(positions), dtype=torch.bool)
        for epoch in epochs.unique().tolist():
            here = epochs == epoch
            order, flip = self._epoch(epoch)
            idx[here] = order.cpu()[positions[here] - epoch * self.n]
            if flip is not None:
                flips[here] = flip.cpu()[positions[here] - epoch * self.n]
        device = self.device
        return self._take(idx.to(device), flips.to(device) if self.hflip else None)


class MixedBatches:
    """A stream mixing new data with a fraction f of old data: replay against forgetting (finetune.replay), unlabelled
    items beside labelled ones (data.unlabelled).

    Position q is old data when floor((q+1)f) > floor(qf), so every stretch of the stream holds
    the fraction f (to one image) however it is cut into batches. Before q lie floor(qf) old
    positions, so q is old item floor(qf) or new item q - floor(qf): each stream keeps its order,
    and a batch takes a contiguous stretch of each.
    """

    def __init__(self, new: ArrayBatches, old: ArrayBatches, fraction: float):
        if new.sample_shape != old.sample_shape:
            raise UserError(f"the replayed data holds items of shape {old.sample_shape}, the new data {new.sample_shape}: "
                            "replay needs data of the same shape")
        if (new.labels is None) != (old.labels is None):
            raise UserError("the replayed data and the new data must both have labels or both have none")
        self.new, self.old, self.fraction = new, old, fraction
        self.sample_shape, self.labels = new.sample_shape, new.labels  # (labels: whether the batches carry any)
        self.modality = new.modality  # train_step draws noise of its model shape

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Where each position of the batch comes from in cat(old, new): integer arithmetic on the
        # CPU (float64, which not every device has), copied to the device without waiting for it.
        q = torch.arange(start, start + count + 1, dtype=torch.float64)
        before = torch.floor(q * self.fraction).long()  # old positions before each q (and after the last)
        old_start, n_old = int(before[0]), int(before[-1] - before[0])
        is_old = before[1:] > before[:-1]
        source = torch.where(is_old, before[:-1] - old_start, n_old + (q[:-1].long() - before[:-1]) - (start - old_start))
        x_old, y_old = self.old.batch(old_start, n_old)
        x_new, y_new = self.new.batch(start - old_start, count - n_old)
        source = _to_device(source, x_new.device)
        x = torch.cat([x_old, x_new])[source]
        return x, None if y_new is None else torch.cat([y_old, y_new])[source]
