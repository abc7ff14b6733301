"""Sampling and evaluation split over the processes of `accelerate launch`: the images and scores of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from difftrain import distributed
from difftrain.config import ModelConfig, UNetConfig
from difftrain.diffusion import EDM, Denoiser
from difftrain.distributed import on_main_process, own_batches
from difftrain.errors import UserError
from difftrain.evaluation.likelihood import bits_per_dim
from difftrain.modalities import modality_for
from difftrain.models import build_network
from difftrain.sampling import SamplingSpec, batch_generator, generate
from tests.conftest import tiny_overrides

SHAPE = (8, 8, 1)  # H, W, C
MODALITY = modality_for({"kind": "image", "shape": list(SHAPE)})


@pytest.fixture(scope="module")
def denoiser() -> Denoiser:
    """An untrained class-conditional network: its samples are not images, but they are reproducible."""
    torch.manual_seed(0)
    config = ModelConfig(unet=UNetConfig(channels=[16, 16], attention=[False, False], layers_per_block=1, norm_groups=8,
                                         attention_head_dim=8))
    return Denoiser(build_network(config, MODALITY, 3).eval().requires_grad_(False), EDM())


class TwoProcesses:
    """Plays the two processes of a launch one after the other, in this process. Each one's all_gather_object
    returns what it and the processes played before it sent, so the one played last receives everything."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.sent: dict[int, object] = {}
        self.rank = 0
        monkeypatch.setattr(torch.distributed, "all_gather_object", self.all_gather_object)

    def play(self, rank: int) -> None:
        self.rank = rank
        self.monkeypatch.setattr(distributed, "processes", lambda: (rank, 2))

    def all_gather_object(self, out: list, obj) -> None:
        self.sent[self.rank] = obj
        out[:] = [self.sent.get(rank, {}) for rank in range(len(out))]  # {}: no batches from one not yet played


def test_each_batch_draws_its_own_random_numbers():
    def draw(seed: int, index: int) -> torch.Tensor:
        return torch.randn(8, generator=batch_generator(seed, index))

    # Batch 0 draws from the seed itself, as the whole run once did: runs of one batch keep their images.
    assert torch.equal(draw(3, 0), torch.randn(8, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(draw(3, 5), draw(3, 5))
    streams = [draw(seed, index) for seed in (3, 4, -1) for index in range(4)]
    assert len({tuple(s.tolist()) for s in streams}) == len(streams)


def test_processes_take_every_world_th_batch():
    shares = [list(own_batches(7, rank, 3)) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert list(own_batches(7, 0, 1)) == list(range(7))
    assert list(own_batches(2, 3, 4)) == []  # more processes than batches: some have none


def test_two_processes_draw_the_images_of_one(denoiser, monkeypatch):
    spec = SamplingSpec(sampler="ddpm", steps=3, seed=5)  # stochastic steps: the sampler draws from each batch's generator
    labels = np.arange(20) % 3
    kwargs = dict(batch_size=6)  # the null label comes from denoiser.net.null_label
    whole = generate(denoiser, MODALITY, 20, labels, spec, **kwargs)  # batches 0-5, 6-11, 12-17, 18-19
    # A full batch depends on the seed and its index only: a shorter run begins with the same batches.
    assert np.array_equal(generate(denoiser, MODALITY, 12, labels[:12], spec, **kwargs), whole[:12])

    launch = TwoProcesses(monkeypatch)
    counted = {0: [], 1: []}
    share = {}
    for rank in (1, 0):  # the main process last: it receives both shares
        launch.play(rank)
        share[rank] = generate(denoiser, MODALITY, 20, labels, spec, **kwargs, progress=counted[rank].append, across_processes=True)
    assert np.array_equal(share[1], whole[np.r_[6:12, 18:20]])  # batches 1 and 3 alone: process 0 has sent nothing yet
    assert np.array_equal(share[0], whole)
    assert counted == {0: [6, 6], 1: [6, 2]}  # each process counts the images it draws


def test_one_process_never_asks_for_other_processes(denoiser, monkeypatch):
    def no_launch():
        raise AssertionError("a single-process call looked for other processes")

    monkeypatch.setattr(distributed, "processes", no_launch)
    images = generate(denoiser, MODALITY, 5, np.zeros(5, np.int64), SamplingSpec(steps=2), batch_size=2)
    assert images.shape == (5, *SHAPE)


def test_two_processes_measure_the_likelihood_of_one(denoiser, monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, size=(10, *SHAPE), dtype=np.uint8)
    labels = np.arange(10) % 3
    kwargs = dict(steps=4, batch_size=4, seed=2)  # batches of 4, 4 and 2 images; Hutchinson probes from each batch's generator
    whole = bits_per_dim(denoiser, MODALITY, images, labels, **kwargs)
    launch = TwoProcesses(monkeypatch)
    launch.play(1)
    bits_per_dim(denoiser, MODALITY, images, labels, **kwargs, across_processes=True)
    launch.play(0)
    assert bits_per_dim(denoiser, MODALITY, images, labels, **kwargs, across_processes=True) == whole


def test_an_error_on_the_main_process_stops_every_process(monkeypatch):
    def no_weights():
        raise UserError("no weights")

    # The main process: its own error. Another: the main one's message, without doing the work.
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", lambda box, src: None)  # the main one's box stays
    monkeypatch.setattr(distributed, "processes", lambda: (0, 2))
    with pytest.raises(UserError, match="no weights"):
        on_main_process(no_weights)
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", lambda box, src: box.__setitem__(0, "no weights"))
    monkeypatch.setattr(distributed, "processes", lambda: (1, 2))
    with pytest.raises(UserError, match="no weights"):
        on_main_process(lambda: pytest.fail("only the main process works"))
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", lambda box, src: box.__setitem__(0, None))  # no error
    assert on_main_process(lambda: pytest.fail("only the main process works")) is None


# End to end: `accelerate launch` with two CPU processes against one plain process. -------------------------

def difftrain(*args, processes: int = 1) -> subprocess.CompletedProcess:
    """`python -m difftrain ARGS`, or the same with `--processes N` (accelerate launch, CPU processes)."""
    more = ["--processes", str(processes)] if processes > 1 else []
    # One thread per process in both, so that every batch is computed the same way.
    result = subprocess.run([sys.executable, "-m", "difftrain", *map(str, args), *more], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_dir):
    """A tiny trained run that samples in batches of 8."""
    from difftrain.config import load_config
    from difftrain.training.trainer import train

    run = tmp_path_factory.mktemp("runs") / "split"
    train(load_config(overrides=tiny_overrides(digits_dir, **{"sample.batch_size": 8, "sample.steps": 3})), run, progress=False)
    return run


def test_sample_and_eval_under_accelerate_launch_match_one_process(run_dir, tmp_path):
    # 40 samples in 5 batches of 8: process 0 draws batches 0, 2, 4 and process 1 batches 1, 3.
    (tmp_path / "two").mkdir()
    two = difftrain("sample", run_dir, "--n", 40, "--out", tmp_path / "two" / "s.npz", "--seed", 7, processes=2)
    one = difftrain("sample", run_dir, "--n", 40, "--out", tmp_path / "one.npz", "--seed", 7)
    with np.load(tmp_path / "two" / "s.npz") as a, np.load(tmp_path / "one.npz") as b:
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
        meta_a, meta_b = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
        assert {**meta_a, "created": None} == {**meta_b, "created": None}
    # One process wrote the files and spoke.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["s.npz", "s.png"]
    assert "".join(two.stdout.split()) == str(tmp_path / "two" / "s.npz")
    said = " ".join(two.stderr.split())  # the console wraps long lines
    assert said.count("40 samples") == 1 and "in 2 processes" in said and "processes" not in one.stderr

    # Evaluation: the samples and the likelihood's 200 held-out images (batches of 128 and 72) split in two.
    def evaluations() -> list[dict]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r.get("event") == "eval"]

    args = ["eval", run_dir, "--n", 40, "--metrics", "fid,nll", "--nll-images", 200, "--json"]
    before = len(evaluations())
    two = difftrain(*args, processes=2)
    [two_record] = json.loads(two.stdout)  # one JSON list: only the main process printed
    assert "sampled in 2 processes" in " ".join(two.stderr.split()) and len(evaluations()) == before + 1
    [one_record] = json.loads(difftrain(*args).stdout)
    for key in ("fid", "fid_floor", "nll_bits_per_dim", "nll_std_error"):
        assert two_record[key] == one_record[key], key
    # The same evaluation again (one process or two): it replaces its record instead of logging it twice.
    assert len(evaluations()) == before + 1 and evaluations()[-1]["fid"] == two_record["fid"]
