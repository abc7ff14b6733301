"""Text end to end: `data prepare --kind text`, training a masked-diffusion model, sampling with prompts and infilling,
and its evaluation, as a user runs them; with the refusals a user sees."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from difftrain.data import load_dataset
from difftrain.modalities import prepare
from difftrain.store.run import open_run
from tests.conftest import tiny_overrides
from tests.test_cli import cli, difftrain

POEM = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 12


def flat(text: str) -> str:
    """A message as one line (rich wraps long ones)."""
    return " ".join(text.split())


def text_overrides(data: Path, **extra) -> list[str]:
    return tiny_overrides(data, **{"model.arch": "auto", "model.token_transformer.width": 32, "model.token_transformer.depth": 1,
                                   "model.token_transformer.heads": 2, "sample.sampler": "ancestral", "sample.steps": 8,
                                   "eval.metrics": "[nll, judge, dist, mem]", "eval.n_samples": 20, "eval.nll_steps": 4,
                                   "eval.judge_steps": 30, **extra})


@pytest.fixture(scope="module")
def sums_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text") / "sums"
    cli("data", "prepare", "sums", "--kind", "text", "--block", "32", "--out", out)
    return out


@pytest.fixture(scope="module")
def text_run(sums_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "sums"
    cli("train", "--preset", "text", "--out", run, *text_overrides(sums_dir))
    return run


def test_a_text_file_becomes_blocks_of_character_ids_split_by_position(tmp_path):
    source = tmp_path / "poem.txt"
    source.write_text(POEM, encoding="utf-8")
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    ds = prepare(source, tmp_path / "poem", kind="text", block=16, test_fraction=0.25)
    vocab = sorted(set(POEM))
    assert ds.manifest["vocab"] == vocab and ds.modality.vocab_size == len(vocab)
    cut = round(len(POEM) * 0.75)
    assert ds.train_data.shape == (cut // 16, 16) and ds.train_data.dtype == np.int32
    # The blocks are the text itself, in order: the first 75% trains, the rest is held out.
    assert "".join(ds.modality.decode(b) for b in ds.train_data) == POEM[:cut // 16 * 16]
    assert ds.modality.decode(ds.test_data[0]) == POEM[cut:cut + 16]
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before


def test_bytes_read_any_file_and_characters_need_utf8(tmp_path):
    source = tmp_path / "latin1.txt"
    source.write_bytes(("caf\xe9 " * 40).encode("latin-1"))
    failed = difftrain("data", "prepare", source, "--kind", "text", "--out", tmp_path / "c", "--block", "8")
    assert failed.returncode == 2 and "latin1.txt is not UTF-8" in flat(failed.stderr) and "--tokenizer byte" in flat(failed.stderr)
    assert "Traceback" not in flat(failed.stderr)
    ds = prepare(source, tmp_path / "b", kind="text", tokenizer="byte", block=8)
    assert ds.modality.vocab_size == 256 and ds.train_data[0].tolist() == list(b"caf\xe9 caf")


def test_text_too_short_for_two_blocks_is_refused(tmp_path):
    source = tmp_path / "short.txt"
    source.write_text("hello", encoding="utf-8")
    failed = difftrain("data", "prepare", source, "--kind", "text", "--out", tmp_path / "s")
    assert failed.returncode == 2 and "a smaller --block" in flat(failed.stderr) and not (tmp_path / "s").exists()


def test_options_of_other_kinds_are_refused(tmp_path, sums_dir):
    failed = difftrain("data", "prepare", "sums", "--kind", "text", "--window", "4", "--out", tmp_path / "x")
    assert failed.returncode == 2 and "--window applies to timeseries, not to text" in flat(failed.stderr)


def test_an_untrained_model_is_bound_by_log2_of_the_vocabulary(sums_dir):
    from difftrain.config import load_config
    from difftrain.evaluation.likelihood import bits_per_dim
    from difftrain.models import build_network
    from difftrain.store.run import denoiser_of

    config = load_config("text", overrides=text_overrides(sums_dir))
    ds = load_dataset(sums_dir)
    denoiser = denoiser_of(config, ds.modality, build_network(config.model, ds.modality, 0))
    result = bits_per_dim(denoiser, ds.modality, ds.test_data[:8], None, steps=4)
    # The output layer starts at zero: uniform over the vocabulary, ln V nats for every masked token, whatever the draw.
    assert result["nll_bits_per_dim"] == pytest.approx(math.log2(ds.modality.vocab_size), abs=1e-5)


def test_a_trained_model_samples_texts_and_keeps_every_given_token(text_run, tmp_path):
    cli("sample", text_run, "--n", "5", "--out", tmp_path / "texts.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "texts.jsonl").read_text(encoding="utf-8").splitlines()]
    modality = open_run(text_run).modality
    assert len(lines) == 5 and all(len(x["tokens"]) == 32 and modality.decode(np.array(x["tokens"])) == x["text"] for x in lines)
    cli("sample", text_run, "--n", "6", "--prompt", "12+", "--infill", "[MASK]{2}=[MASK]{3}\n4+5=9\n", "--out", tmp_path / "f.jsonl")
    filled = [json.loads(line)["text"] for line in (tmp_path / "f.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(filled) == 6 and all(len(t) == 32 and t.startswith("12+") and t[5] == "=" and t[9:16] == "\n4+5=9\n" for t in filled)
    # Samples under the same seed are the same; the .npz holds the token ids.
    cli("sample", text_run, "--n", "5", "--out", tmp_path / "texts.npz")
    with np.load(tmp_path / "texts.npz") as f:
        assert f["tokens"].dtype == np.int32 and f["tokens"].tolist() == [x["tokens"] for x in lines]
        assert json.loads(str(f["meta"]))["sampler"] == "ancestral"


def test_texts_of_any_length_grow_half_a_block_at_a_time(text_run, tmp_path):
    """Longer than the block (32): each new half block is drawn after the last half block so far; shorter: a prefix."""
    cli("sample", text_run, "--n", "3", "--length", "70", "--prompt", "7+", "--out", tmp_path / "long.npz")
    with np.load(tmp_path / "long.npz") as f:
        tokens, meta = f["tokens"], json.loads(str(f["meta"]))
    modality = open_run(text_run).modality
    assert tokens.shape == (3, 70) and all(modality.decode(t).startswith("7+") for t in tokens)
    assert meta["length"] == 70 and meta["generated_tokens"] == 30 + 38
    cli("sample", text_run, "--n", "3", "--length", "10", "--out", tmp_path / "short.jsonl")
    texts = [json.loads(line)["tokens"] for line in (tmp_path / "short.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [len(t) for t in texts] == [10, 10, 10]
    short = difftrain("sample", text_run, "--n", "2", "--length", "2", "--prompt", "12+", "--out", tmp_path / "s.jsonl")
    assert short.returncode == 2 and "--length 2 is shorter than the 3 tokens" in flat(short.stderr)


def test_prompts_are_refused_with_the_reason(text_run, tmp_path):
    unknown = difftrain("sample", text_run, "--n", "2", "--prompt", "12Q", "--out", tmp_path / "q.jsonl")
    assert unknown.returncode == 2 and "'Q'" in flat(unknown.stderr) and "Traceback" not in flat(unknown.stderr)
    long = difftrain("sample", text_run, "--n", "2", "--infill", "[MASK]{40}", "--out", tmp_path / "l.jsonl")
    assert long.returncode == 2 and "make 40 tokens" in flat(long.stderr) and "hold 32" in flat(long.stderr)
    wrong = difftrain("sample", text_run, "--n", "2", "--sampler", "heun", "--out", tmp_path / "h.jsonl")
    assert wrong.returncode == 2 and "--sampler ancestral" in flat(wrong.stderr)


def test_eval_reports_the_bound_and_the_text_metrics_next_to_real_text(text_run, sums_dir):
    result = cli("eval", text_run, "--json")
    record = json.loads(result.output[result.output.index("["):])[0]
    assert 0 < record["nll_bits_per_dim"] < math.log2(14) + 0.1 and record["nll_estimator"].startswith("masked")
    # Real held-out sums are all well formed and right: the floors say so.
    assert record["sums_correct_floor"] == 1.0 and record["sums_well_formed_floor"] == 1.0
    assert 0 <= record["sums_correct"] <= 1 and 0 < record["distinct_2"] <= 1 and record["unigram_entropy"] > 0
    # Verbatim copying next to held-out text: nearly every held-out line 'a+b=c' (with its line breaks, 7 to 10
    # characters) is in the training sums too, but two lines in a row (16-grams) almost never are.
    assert 7 <= record["longest_overlap_floor"] < 20 and 0 <= record["longest_overlap"] <= 32
    assert record["ngram_overlap_floor"] < 0.05 and 0 <= record["ngram_overlap"] <= 1
    # The autoregressive judge, trained once beside the dataset: real text it never saw is likelier than uniform.
    assert 1 < record["judge_perplexity_floor"] < 14 and record["judge_perplexity"] > 1 and record["judge"]["steps"] == 30
    assert len(list((sums_dir / "judge").glob("judge-*.safetensors"))) == 1


def test_text_metrics_on_known_texts():
    from difftrain.modalities.text_metrics import distinct_ngrams, sums_correct, unigram_entropy, well_formed_sums

    assert distinct_ngrams(np.array([[1, 1, 1, 1]]), 2) == pytest.approx(1 / 3)
    assert distinct_ngrams(np.array([[1, 2, 3, 4]]), 2) == 1.0
    assert unigram_entropy(np.array([[0, 1, 2, 3]])) == pytest.approx(2.0)
    # Only complete lines count: the first and last pieces of a block are cut.
    texts = ["9=1\n1+2=3\n2+2=5\nab\n3+", "\n10+5=15\n"]
    assert sums_correct(texts) == pytest.approx(2 / 3) and well_formed_sums(texts) == pytest.approx(3 / 4)


def test_resume_and_accumulation_reproduce_a_text_run(sums_dir, tmp_path):
    # Masked diffusion draws its own noise (masking times and scores) from the trainer's stream: resuming, and splitting
    # the batch, must not change it.
    from difftrain.config import load_config
    from difftrain.training.trainer import train
    from tests.test_training import assert_same, weights

    cfg = load_config("text", overrides=text_overrides(sums_dir, **{"train.duration_steps": 4, "model.token_transformer.dropout": 0.1}))
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_at_step=2)
    train(cfg, tmp_path / "split", progress=False, resume=True)
    assert_same(weights(tmp_path / "full", "ema.safetensors"), weights(tmp_path / "split", "ema.safetensors"), atol=1e-6, rtol=1e-5)
    accumulated = load_config("text", overrides=text_overrides(sums_dir, **{"train.duration_steps": 2, "train.accumulation": 4,
                                                                             "optim.warmup_images": 0}))
    one = load_config("text", overrides=text_overrides(sums_dir, **{"train.duration_steps": 2, "optim.warmup_images": 0}))
    a = train(one, tmp_path / "one", progress=False).history
    b = train(accumulated, tmp_path / "acc", progress=False).history
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)


def test_the_preset_alone_prepares_the_built_in_sums_into_the_run(tmp_path):
    run = tmp_path / "run"
    overrides = [o for o in text_overrides(Path("sums")) if not o.startswith("data.path")]
    cli("train", "--preset", "text", "--out", run, *overrides, "train.duration_steps=1")
    ds = load_dataset(run / "data")
    assert ds.modality.spec["corpus"] == "sums" and ds.train_data.shape[1] == 256
    assert ds.modality.decode(ds.train_data[0]).count("+") > 10


def test_doctor_measures_a_text_config(sums_dir):
    """The probe times real steps and one sampling call of the token network (token ids in, not Gaussian noise)."""
    result = cli("doctor", "--preset", "text", *text_overrides(sums_dir))
    output = flat(result.output)
    assert "PASS sampling" in output and "ancestral, 8 network evaluations" in output and "FAIL" not in output


def test_evaluation_during_training_keeps_the_checkpoint_with_the_best_bound(sums_dir, tmp_path):
    run = tmp_path / "during"
    cli("train", "--preset", "text", "--out", run, *text_overrides(sums_dir, **{
        "eval.every_images": 32, "eval.nll_images": 16, "train.checkpoint_every_images": 32}))
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"event": "eval"' in line]
    assert len(evals) == 2 and all(e["nll_bits_per_dim"] > 0 for e in evals)
    assert (run / "checkpoints" / "best").is_dir()
