"""Scores of generated time-series windows and of sampled forecasts.

Generation: the protocol of TimeGAN (Yoon et al. 2019) and Diffusion-TS (Yuan & Qiao, ICLR 2024), on float
windows (N, L, C) min-max scaled to about [0, 1]: the post-hoc discriminative and predictive scores, Context-FID
(Fréchet distance of TS2Vec embeddings, Jeha et al. 2022) and the correlational score. They follow the public
Diffusion-TS code (Utils/discriminative_metric.py, predictive_metric.py, context_fid.py, cross_correlation.py,
Models/ts2vec); every departure is named where it is made. Papers report each score as mean ± spread over
repeated runs: `repeated`.

Forecasting: CRPS, MAE and MSE of sample paths against targets that may hold NaN (missing values).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from difftrain.evaluation.arms import seed_std
from difftrain.evaluation.frechet import frechet_between

_EVAL_CHUNK = 4096  # windows per forward pass when scoring: bounds memory whatever N is


# ---------------------------------------------------------------------------------------------------- helpers


def _windows(*sets: np.ndarray, minimum: int = 1, nan: bool = False) -> list[np.ndarray]:
    """The sets as float32 (N, L, C) of one L and C, checked finite (NaN allowed with `nan`)."""
    out = [np.asarray(s, dtype=np.float32) for s in sets]
    shapes = [s.shape for s in out]
    if any(s.ndim != 3 for s in out) or len({s[1:] for s in shapes}) != 1:
        raise ValueError(f"expected windows (N, L, C) of one L and C, got shapes {shapes}")
    if any(len(s) < minimum for s in out):
        raise ValueError(f"each set needs at least {minimum} windows, got {[len(s) for s in out]}")
    if not all((~np.isinf(s) if nan else np.isfinite(s)).all() for s in out):
        raise ValueError("the windows hold infinite values" if nan else "the windows hold NaN or infinite values")
    return out


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device, threads: int | None) -> Iterator[None]:
    """torch seeded with `seed` inside, the caller's RNG state (and thread count) untouched outside."""
    devices = [device.index or 0] if device.type == "cuda" else []
    previous = torch.get_num_threads()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            if threads is not None:
                torch.set_num_threads(previous)


def _in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(torch.tensor(x[i:i + _EVAL_CHUNK], device=device)).cpu()
                          for i in range(0, len(x), _EVAL_CHUNK)])


class _GRU(nn.Module):
    """TimeGAN's post-hoc network: a one-layer GRU and a linear map of its states to one value.

    torch's GRU puts the reset gate after the hidden matmul (cuDNN form), TF1's GRUCell before it, and the
    initialisations differ (torch's uniform vs TF's Glorot): same model class, not the same numbers.
    """

    def __init__(self, inputs: int, hidden: int, last_only: bool):
        super().__init__()
        self.gru, self.out, self.last_only = nn.GRU(inputs, hidden, batch_first=True), nn.Linear(hidden, 1), last_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, last = self.gru(x)
        return self.out(last[-1]).squeeze(-1) if self.last_only else self.out(states)


def _hidden(channels: int, hidden: int | None) -> int:
    """TimeGAN's int(dim / 2), at least 1 (TimeGAN's own code builds a 0-unit GRU for one channel)."""
    return max(1, channels // 2) if hidden is None else hidden


# ------------------------------------------------------------------------------- discriminative / predictive


def discriminative_score(real: np.ndarray, fake: np.ndarray, *, seed: int = 0, steps: int = 2000, batch: int = 128,
                         hidden: int | None = None, device: str | torch.device = "cpu",
                         threads: int | None = None) -> float:
    """TimeGAN's discriminative score |accuracy - 0.5| of a post-hoc GRU classifier of real (1) vs fake (0).

    As TimeGAN: hidden int(C / 2) (at least 1) read from the last state; real and fake each shuffled and split
    80/20; `steps` Adam steps (lr 1e-3) on the summed cross-entropies of `batch` random real and `batch` random
    fake training windows; accuracy over the pooled test windows. 0 is indistinguishable, 0.5 always told apart.
    """
    real, fake = _windows(real, fake, minimum=2)
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    parts = []
    for data in (real, fake):
        order = rng.permutation(len(data))
        cut = int(len(data) * 0.8)
        parts += [torch.tensor(data[order[:cut]], device=device), data[order[cut:]]]
    real_train, real_test, fake_train, fake_test = parts
    with _seeded(seed, device, threads):
        model = _GRU(real.shape[2], _hidden(real.shape[2], hidden), last_only=True).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(steps):
            xr = real_train[torch.from_numpy(rng.permutation(len(real_train))[:batch]).to(device)]
            xf = fake_train[torch.from_numpy(rng.permutation(len(fake_train))[:batch]).to(device)]
            logits = model(torch.cat([xr, xf]))
            loss = (F.binary_cross_entropy_with_logits(logits[:len(xr)], torch.ones_like(logits[:len(xr)]))
                    + F.binary_cross_entropy_with_logits(logits[len(xr):], torch.zeros_like(logits[len(xr):])))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        right = (int((_in_chunks(model, real_test, device) > 0).sum())
                 + int((_in_chunks(model, fake_test, device) <= 0).sum()))
    return abs(right / (len(real_test) + len(fake_test)) - 0.5)


def _next_step(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TimeGAN's task: channels 0..C-2 at steps 0..L-2 as input, channel C-1 at steps 1..L-1 as target
    (one channel: itself at steps 0..L-2)."""
    c = data.shape[2]
    return data[:, :-1, :max(1, c - 1)], data[:, 1:, c - 1:]


def predictive_score(train_on: np.ndarray, test_on: np.ndarray, *, seed: int = 0, steps: int = 5000, batch: int = 128,
                     hidden: int | None = None, device: str | torch.device = "cpu", threads: int | None = None) -> float:
    """TimeGAN's predictive score, "train on synthetic, test on real": the mean absolute error on `test_on` of a
    post-hoc GRU next-step predictor (see _next_step) trained on `train_on`.

    As TimeGAN: hidden int(C / 2) (at least 1), per-step linear output through a sigmoid (the data lie in
    [0, 1]), L1 loss, `steps` Adam steps (lr 1e-3) on `batch` random windows. Lower is better; compare with
    the same score trained on real windows.
    """
    train_on, test_on = _windows(train_on, test_on, minimum=1)
    if train_on.shape[1] < 2:
        raise ValueError("the predictive score needs windows of at least 2 steps")
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    x_train, y_train = (torch.tensor(a, device=device) for a in _next_step(train_on))
    x_test, y_test = _next_step(test_on)
    with _seeded(seed, device, threads):
        model = _GRU(x_train.shape[2], _hidden(train_on.shape[2], hidden), last_only=False).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = torch.from_numpy(rng.permutation(len(x_train))[:batch]).to(device)
            loss = (torch.sigmoid(model(x_train[idx])) - y_train[idx]).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        predicted = torch.sigmoid(_in_chunks(model, x_test, device)).numpy()
    return float(np.abs(predicted.astype(np.float64) - y_test).mean())


# --------------------------------------------------------------------------------------------- Context-FID


class _SamePadConv(nn.Module):
    def __init__(self, cin: int, cout: int, dilation: int, kernel: int = 3):
        super().__init__()
        field = (kernel - 1) * dilation + 1
        self.conv, self.remove = nn.Conv1d(cin, cout, kernel, padding=field // 2, dilation=dilation), 1 - field % 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out[:, :, :-self.remove] if self.remove else out


class _ConvBlock(nn.Module):
    """TS2Vec's residual block: GELU, dilated conv, GELU, dilated conv, plus the (projected) input."""

    def __init__(self, cin: int, cout: int, dilation: int, final: bool):
        super().__init__()
        self.conv1, self.conv2 = _SamePadConv(cin, cout, dilation), _SamePadConv(cout, cout, dilation)
        self.projector = nn.Conv1d(cin, cout, 1) if cin != cout or final else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.projector is None else self.projector(x)
        return self.conv2(F.gelu(self.conv1(F.gelu(x)))) + residual


class _TSEncoder(nn.Module):
    """TS2Vec's encoder (Yue et al. 2022): linear input projection, timestamp masking (training only), `depth`
    residual blocks of dilation 1, 2, 4, ... and a last block to `out` channels; per-timestep features (B, T, out)."""

    def __init__(self, inputs: int, out: int, hidden: int, depth: int):
        super().__init__()
        self.input_fc = nn.Linear(inputs, hidden)
        widths = [hidden] * depth + [out]
        self.blocks = nn.Sequential(*[_ConvBlock(widths[i - 1] if i else hidden, w, 2 ** i, i == len(widths) - 1)
                                      for i, w in enumerate(widths)])
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        present = ~x.isnan().any(-1)  # TS2Vec's NaN handling: missing steps are zeroed and masked out
        h = self.input_fc(torch.nan_to_num(x, nan=0.0))
        if self.training:  # TS2Vec's default "binomial" mask: each timestamp kept with probability 1/2
            present = present & (torch.rand(present.shape, device=x.device) < 0.5)
        h = h * present.unsqueeze(-1)
        return self.dropout(self.blocks(h.transpose(1, 2))).transpose(1, 2)


def _contrast(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """TS2Vec's contrast over axis 1 of (G, n, D): item i of z1 must pick item i of z2 among the other 2n - 1
    (and vice versa) by dot-product softmax; mean cross-entropy over the G groups."""
    n = z1.size(1)
    if n == 1:
        return z1.new_zeros(())
    z = torch.cat([z1, z2], dim=1)
    sim = z @ z.transpose(1, 2)
    logits = -F.log_softmax(torch.tril(sim, -1)[:, :, :-1] + torch.triu(sim, 1)[:, :, 1:], dim=-1)  # self dropped
    i = torch.arange(n, device=z.device)
    return (logits[:, i, n + i - 1].mean() + logits[:, n + i, i].mean()) / 2


def _hierarchical_loss(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """TS2Vec's hierarchical contrastive loss of two views (B, T, D) of the same timestamps: instance contrast
    (same timestamp, across the batch) and temporal contrast (same series, across timestamps), then max-pool
    time by 2 and repeat down to one timestamp; the mean over levels."""
    loss, levels = z1.new_zeros(()), 0
    while z1.size(1) > 1:
        loss = loss + alpha * _contrast(z1.transpose(0, 1), z2.transpose(0, 1)) + (1 - alpha) * _contrast(z1, z2)
        levels += 1
        z1, z2 = (F.max_pool1d(z.transpose(1, 2), kernel_size=2).transpose(1, 2) for z in (z1, z2))
    if z1.size(1) == 1:
        loss, levels = loss + alpha * _contrast(z1.transpose(0, 1), z2.transpose(0, 1)), levels + 1
    return loss / levels


class SeriesEncoder:
    """A trained TS2Vec-style encoder: `embed` gives instance-level embeddings (max-pooled over time), `sha256`
    identifies its weights so that scores computed against it can say which encoder they used."""

    def __init__(self, net: _TSEncoder, channels: int, device: torch.device, meta: dict):
        self.net, self.channels, self.device, self.meta = net.eval(), channels, device, meta
        digest = hashlib.sha256()
        for name, tensor in sorted(net.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.sha256 = digest.hexdigest()

    @property
    def dim(self) -> int:
        return self.meta["dims"]

    def embed(self, x: np.ndarray) -> np.ndarray:
        """(N, L, C) windows, any L >= 1, to (N, dims) float64: per-timestep features max-pooled over time
        (TS2Vec's encoding_window="full_series"). NaN marks a missing value (its timestamp is masked)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != self.channels:
            raise ValueError(f"expected windows (N, L, {self.channels}), got shape {x.shape}")
        return _in_chunks(lambda b: self.net(b).amax(dim=1), x, self.device).numpy().astype(np.float64)


def fit_series_encoder(train: np.ndarray, *, seed: int = 0, steps: int | None = None, batch: int = 8,
                       dims: int = 32, hidden: int = 64, depth: int = 10, lr: float = 1e-3,
                       device: str | torch.device = "cpu", threads: int | None = None) -> SeriesEncoder:
    """TS2Vec trained on the real windows `train` (N, L, C), as Diffusion-TS's Context-FID does (batch 8, lr 1e-3,
    `steps` None: TS2Vec's default 200 iterations, 600 when train holds over 100000 values).

    As TS2Vec: NaN values mark missing timestamps (zeroed and masked); AdamW over epochs of shuffled batches
    (last partial batch dropped); each step two overlapping random crops of one random length, their shared span contrasted by the hierarchical loss; the embedding net
    is the running (SWA) average of all iterates, starting from the initial weights. Departures: `dims` 32, not
    Diffusion-TS's 320 (fewer dimensions than embeddings keep the covariance well-conditioned); series longer
    than TS2Vec's max_train_length are not cut into sections (windows here are short).
    """
    (train,) = _windows(train, nan=True)
    train = train[~np.isnan(train).all(axis=(1, 2))]  # as TS2Vec: windows with no value are dropped
    if len(train) < 2:
        raise ValueError(f"the encoder needs at least 2 windows with values, got {len(train)}")
    n, length, channels = train.shape
    if length < 2:
        raise ValueError("the encoder needs windows of at least 2 steps")
    steps = (200 if train.size <= 100_000 else 600) if steps is None else steps
    batch = min(batch, n)
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    data = torch.tensor(train, device=device)
    with _seeded(seed, device, threads):
        net = _TSEncoder(channels, dims, hidden, depth).to(device)
        average = torch.optim.swa_utils.AveragedModel(net)
        average.update_parameters(net)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
        order, cursor = rng.permutation(n), 0
        for _ in range(steps):
            if cursor + batch > n:
                order, cursor = rng.permutation(n), 0
            x = data[torch.from_numpy(order[cursor:cursor + batch]).to(device)]
            cursor += batch
            # TS2Vec's cropping: a span [left, right) of length crop seen by both views, view 1 extended left to
            # eleft, view 2 right to eright, and each series shifted by its own offset.
            crop = int(rng.integers(2, length + 1))
            left = int(rng.integers(length - crop + 1))
            right = left + crop
            eleft, eright = int(rng.integers(left + 1)), int(rng.integers(right, length + 1))
            offset = rng.integers(-eleft, length - eright + 1, size=batch)
            view1 = x[torch.arange(batch)[:, None], torch.from_numpy(offset + eleft)[:, None] + torch.arange(right - eleft)]
            view2 = x[torch.arange(batch)[:, None], torch.from_numpy(offset + left)[:, None] + torch.arange(eright - left)]
            loss = _hierarchical_loss(net(view1)[:, -crop:], net(view2)[:, :crop])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            average.update_parameters(net)
        final = copy.deepcopy(average.module)
    meta = {"dims": dims, "hidden": hidden, "depth": depth, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
            "windows": n, "length": length}
    return SeriesEncoder(final, channels, device, meta)


def context_fid(encoder: SeriesEncoder, real: np.ndarray, fake: np.ndarray) -> float:
    """Diffusion-TS's Context-FID (after Jeha et al. 2022): the Fréchet distance between Gaussians fitted to the
    encoder's embeddings of `real` and of `fake`. Diffusion-TS fits a fresh TS2Vec to the real windows at every
    call; here one encoder (fit_series_encoder) serves several sample sets and the real-vs-real floor, so
    their scores are comparable. The sets need more windows than the encoder has dimensions."""
    real, fake = _windows(real, fake, minimum=2)
    return frechet_between(encoder.embed(real), encoder.embed(fake))


# ------------------------------------------------------------------------------------------- correlational


def _cross_correlation(x: np.ndarray) -> np.ndarray:
    """Diffusion-TS's cacf_torch at lag 0: each channel standardised over all windows and steps together
    (unbiased std), then the mean product of every channel pair (i >= j, diagonal included)."""
    x = x.astype(np.float64)
    std = x.std(axis=(0, 1), ddof=1)
    z = (x - x.mean(axis=(0, 1))) / np.where(std > 0, std, 1.0)  # a constant channel: 0, not NaN as theirs
    i, j = np.tril_indices(x.shape[2])
    return (z[..., i] * z[..., j]).mean(axis=(0, 1))


def correlational_score(real: np.ndarray, fake: np.ndarray, *, sample: int | None = None, seed: int = 0) -> float:
    """Diffusion-TS's correlational score (CrossCorrelLoss, Utils/cross_correlation.py): the sum of absolute
    differences between the lag-0 channel cross-correlations of the real and of the fake set, divided by 10.

    As their code, the correlations pool all windows (not a per-window Pearson averaged over windows) and the
    sum runs over the lower triangle with the diagonal, whose terms differ only by |1/(N L) - 1/(M L)| / 10.
    With `sample`, each set is first resampled to `sample` windows with replacement, as their evaluation does
    (N / 5 windows, 5 repeats). One channel: 0.0.
    """
    real, fake = _windows(real, fake, minimum=1)
    if real.shape[2] == 1:
        return 0.0
    if sample is not None:
        rng = np.random.default_rng(seed)
        real, fake = (s[rng.integers(0, len(s), size=sample)] for s in (real, fake))
    if real.shape[0] * real.shape[1] < 2 or fake.shape[0] * fake.shape[1] < 2:
        raise ValueError("the correlational score needs at least 2 values per channel in each set")
    return float(np.abs(_cross_correlation(fake) - _cross_correlation(real)).sum() / 10.0)


def repeated(metric: Callable[[int], float], seeds: Iterable[int] = (0, 1, 2, 3, 4)) -> tuple[float, float]:
    """Mean and sample std of metric(seed) over the seeds, for "mean ± std over repeated runs" (Diffusion-TS
    repeats each score 5 times and reports a 95% t-interval instead of the std)."""
    values = [float(metric(seed)) for seed in seeds]
    if not values:
        raise ValueError("repeated: give at least one seed")
    return float(np.mean(values)), seed_std(values)


# --------------------------------------------------------------------------------------------- forecasting


def _forecast_pair(samples: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Samples (S, ...) and target (...) as float64, restricted to the targets that are not NaN: (S, K), (K,)."""
    samples, target = np.asarray(samples, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if samples.shape[1:] != target.shape or len(samples) < 1:
        raise ValueError(f"expected samples (S, ...) of the target's shape, got {samples.shape} and {target.shape}")
    keep = ~np.isnan(target)
    if not keep.any():
        raise ValueError("every target is NaN: nothing to score")
    samples, target = samples[:, keep], target[keep]
    if not np.isfinite(samples).all():
        raise ValueError("the samples hold NaN or infinite values where a target is given")
    return samples, target


def crps(samples: np.ndarray, target: np.ndarray) -> float:
    """Continuous ranked probability score of the empirical distribution of the samples (S, ...) at the target
    (...), E|X - y| - E|X - X'| / 2 (Gneiting & Raftery 2007), averaged over every non-NaN target.

    E|X - X'| over all S^2 pairs (the ensemble's own distribution, as properscoring's crps_ensemble) is
    2 / S^2 sum_i (2i - S - 1) x_(i) over the sorted samples: O(S log S), no S^2 array. One sample: the MAE.
    """
    samples, target = _forecast_pair(samples, target)
    s = len(samples)
    spread = np.tensordot((2.0 * np.arange(1, s + 1) - s - 1) / s**2, np.sort(samples, axis=0), axes=1)
    return float((np.abs(samples - target).mean(axis=0) - spread).mean())


def _point(forecast: np.ndarray, target: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    forecast = np.asarray(forecast, dtype=np.float64)
    if forecast.shape == np.shape(target):  # already a point forecast
        forecast = forecast[None]
    samples, target = _forecast_pair(forecast, target)
    return (np.median(samples, axis=0) if how == "median" else samples.mean(axis=0)), target


def mae(forecast: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute error over the non-NaN targets of a point forecast (the target's shape) or of the median of
    samples (S, ...), the point that minimises the expected absolute error."""
    point, target = _point(forecast, target, "median")
    return float(np.abs(point - target).mean())


def mse(forecast: np.ndarray, target: np.ndarray) -> float:
    """Mean squared error over the non-NaN targets of a point forecast (the target's shape) or of the mean of
    samples (S, ...), the point that minimises the expected squared error."""
    point, target = _point(forecast, target, "mean")
    return float(((point - target) ** 2).mean())


def quantiles(samples: np.ndarray, qs: Iterable[float] = (0.05, 0.5, 0.95)) -> np.ndarray:
    """Sample quantiles (len(qs), ...) of samples (S, ...) along the sample axis (linear interpolation)."""
    return np.quantile(np.asarray(samples, dtype=np.float64), list(qs), axis=0)
