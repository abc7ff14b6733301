"""Text corpora beyond one plain file: JSON lines with labels, BPE tokenizers, class-conditional models with guidance,
and the distances text is compared by; as a user runs them, with the refusals a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from difftrain.data import load_dataset
from difftrain.diffusion.masked import MaskedDenoiser, MaskedDiffusion, guided_log_probs
from difftrain.errors import UserError
from difftrain.evaluation.memorization import nearest_training
from difftrain.modalities import prepare
from tests.test_cli import cli, difftrain
from tests.test_text import flat, text_overrides

SPORT = ["the team won the match", "a goal in the last minute", "the coach praised the players", "fans sang all night"]
FOOD = ["bake the bread slowly", "add salt to the soup", "the cake needs sugar", "serve the pasta warm"]


def write_corpus(path: Path, documents: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(documents):
        topic, pool = ("sport", SPORT) if i % 2 else ("food", FOOD)
        lines.append(json.dumps({"body": " ".join(rng.choice(pool, 2, replace=False)), "topic": topic}))
    lines[5] = "{not json"
    lines[9] = json.dumps({"body": "no label here"})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_labelled_jsonl_corpus_becomes_one_padded_document_per_block_with_its_class(tmp_path):
    source = write_corpus(tmp_path / "corpus.jsonl")
    before = source.read_bytes()
    result = difftrain("data", "prepare", source, "--kind", "text", "--tokenizer", "bpe:300", "--field", "body",
                       "--label-field", "topic", "--block", "64", "--out", tmp_path / "mine")
    assert result.returncode == 0, result.stderr
    assert source.read_bytes() == before  # the source is never touched
    output = flat(result.stdout + result.stderr)
    assert f"rejected {source}:6: not JSON" in output and f"rejected {source}:10: no label in field 'topic'" in output
    ds = load_dataset(tmp_path / "mine")
    m = ds.modality
    assert ds.class_names == ["food", "sport"] and m.vocab_size == 300 and m.pad_id is not None
    assert len(ds.train_data) + len(ds.test_data) == 198 and len(ds.test_data) == round(198 * 0.1)
    documents = {json.loads(line)["body"]: json.loads(line)["topic"] for line in before.decode().splitlines()
                 if line.startswith('{"body"') and "topic" in line}
    train_texts = {m.decode(row) for row in ds.train_data}
    for row, label in zip(ds.test_data, ds.test_labels):
        text = m.decode(row)
        assert documents[text] == ds.class_names[label]  # each block decodes to its document, padding dropped
        assert row[-1] == m.pad_id  # short documents end in padding
    assert all(documents[t] == ds.class_names[y] for t, y in zip(map(m.decode, ds.train_data), ds.train_labels))
    # Split by document: a duplicated document may sit on both sides, but the split itself is of whole documents.
    assert len(train_texts) > 1 and ds.manifest["split"]["by"].startswith("document")


def test_strict_refuses_a_corpus_with_a_bad_line_and_plain_text_refuses_fields(tmp_path):
    source = write_corpus(tmp_path / "corpus.jsonl")
    strict = difftrain("data", "prepare", source, "--kind", "text", "--field", "body", "--strict", "--out", tmp_path / "a")
    assert strict.returncode == 2 and f"{source}:6: not JSON" in flat(strict.stderr)
    plain = tmp_path / "plain.txt"
    plain.write_text("some text\n" * 100, encoding="utf-8")
    fields = difftrain("data", "prepare", plain, "--kind", "text", "--field", "body", "--out", tmp_path / "b")
    assert fields.returncode == 2 and "--field and --label-field read JSON lines" in flat(fields.stderr)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("choice, message", [("bpe", "a BPE names its vocabulary size"), ("bpe:100", "at least 260"),
                                             ("words", "choose char, byte or bpe:N")])
def test_tokenizer_choices_are_checked(tmp_path, choice, message):
    result = difftrain("data", "prepare", "sums", "--kind", "text", "--tokenizer", choice, "--out", tmp_path / "x")
    assert result.returncode == 2 and message in flat(result.stderr)


def test_a_bpe_is_trained_on_the_training_text_and_decodes_it_exactly(tmp_path):
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}\n" for i in range(400))
    source = tmp_path / "corpus.txt"
    source.write_text(text, encoding="utf-8")
    ds = prepare(source, tmp_path / "bpe", kind="text", tokenizer="bpe:400", block=16, progress=False)
    m = ds.modality
    assert m.vocab_size == 400 and m.pad_id is None
    assert ds.train_data.shape[1] == 16 and ds.train_data.max() < 400
    decoded = "".join(m.decode(row) for row in ds.train_data)
    assert text.startswith(decoded)  # blocks are the text in order, the tail shorter than a block dropped
    # Merges make tokens far fewer than bytes on text this repetitive.
    assert ds.manifest["tokens"]["train"] < 0.5 * len(text.encode())
    assert np.array_equal(m.encode("the lazy dog"), m.encode("the lazy dog")) and m.decode(m.encode("the lazy dog")) == "the lazy dog"


class FixedNet(torch.nn.Module):
    """Logits that depend only on the label: class 0 -> log p_c, null label (1) -> log p_u."""

    null_label = 1

    def __init__(self, conditional: list[float], unconditional: list[float]):
        super().__init__()
        self.table = torch.log(torch.tensor([conditional, unconditional]))

    def forward(self, z, t, cond):
        return self.table[cond["label"]][:, None, :].expand(z.shape[0], z.shape[1], -1)


def test_guidance_for_tokens_is_the_renormalised_geometric_mix():
    p_c, p_u = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]
    denoiser = MaskedDenoiser(FixedNet(p_c, p_u), MaskedDiffusion(3))
    z = torch.full((1, 4), 3)
    cond, null = {"label": torch.tensor([0])}, {"label": torch.tensor([1])}
    for w in (1.0, 2.0, 3.5):
        got = guided_log_probs(denoiser, cond, w, null)(z, 1.0).exp()[0, 0]
        expected = np.asarray(p_u) * (np.asarray(p_c) / np.asarray(p_u)) ** w
        assert torch.allclose(got.double(), torch.from_numpy(expected / expected.sum()), atol=1e-6)


def test_hamming_distances_on_token_ids(tmp_path):
    ds = prepare("sums", tmp_path / "sums", kind="text", block=16, progress=False)
    m = ds.modality
    a, b = ds.test_data[:7], ds.train_data[:50]
    expected = (a[:, None, :] != b[None]).sum(-1)
    got = np.concatenate([d.numpy() for _, d in m.distances(a, b, chunk=3)])
    assert np.array_equal(got, expected)
    d1, d2, _ = nearest_training(ds.train_data[[4, 9]], ds.train_data, m)
    assert d1.tolist() == [0.0, 0.0] and (d2 >= 1).all()  # exact copies; the second nearest differs somewhere


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> Path:
    """Two classes with disjoint alphabets ('low': abcd, 'high': wxyz), documents of 6 to 11 letters, blocks of 12."""
    tmp_path = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    lines = [json.dumps({"text": "".join(rng.choice(list(letters), int(rng.integers(6, 12)))), "label": name})
             for _ in range(150) for name, letters in (("low", "abcd"), ("high", "wxyz"))]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli("data", "prepare", tmp_path / "c.jsonl", "--kind", "text", "--label-field", "label", "--block", "12",
        "--out", tmp_path / "data")
    run = tmp_path / "run"
    cli("train", "--preset", "text", "--out", run, *text_overrides(tmp_path / "data", **{
        "train.duration_steps": 150, "model.token_transformer.width": 48, "optim.lr": 3e-3, "eval.metrics": "[]"}))
    return run


def test_a_class_conditional_text_model_writes_its_class(labelled_run, tmp_path):
    """Samples of one class use its letters (with guidance too) and end where documents do."""
    names = load_dataset(labelled_run.parent / "data").class_names  # ["high", "low"]
    for guidance in ("1", "2"):
        out = tmp_path / f"high-{guidance}.jsonl"
        cli("sample", labelled_run, "--n", "16", "--class", str(names.index("high")), "--guidance", guidance, "--out", out)
        texts = [json.loads(line)["text"] for line in out.read_text(encoding="utf-8").splitlines()]
        letters = "".join(texts)
        assert letters and sum(c in "wxyz" for c in letters) / len(letters) > 0.9, texts
        assert np.mean([len(t) for t in texts]) < 12  # documents end: padding fills the rest of the block
    # A prompt and a class together: the prompt is kept, the class writes the rest.
    out = tmp_path / "prompted.jsonl"
    cli("sample", labelled_run, "--n", "8", "--class", str(names.index("high")), "--prompt", "w", "--out", out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert all(r["text"].startswith("w") and r["label"] == names.index("high") for r in rows)
    letters = "".join(r["text"] for r in rows)
    assert sum(c in "wxyz" for c in letters) / len(letters) > 0.9


def test_synth_writes_labelled_texts_with_utility_and_verbatim_overlap(labelled_run, tmp_path):
    out = tmp_path / "synth"
    cli("synth", labelled_run, "--per-class", "20", "--out", out)
    rows = [json.loads(line) for file in sorted((out / "texts").glob("batch-*.jsonl"))
            for line in file.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 40 and {r["label"] for r in rows} == {"high", "low"}
    for row in rows:  # each text is written in its class's letters (as the model learnt them)
        assert row["text"] and all(c in "abcdwxyz" for c in row["text"])
    report = json.loads((out / "report.json").read_text())
    arms = report["utility"]["arms"]
    assert set(arms) == {"real", "synthetic", "real+synthetic"} and arms["synthetic"]["accuracy_mean"] > 0.9
    copying = report["privacy"]["copying"]
    assert set(copying) == {"longest_overlap", "longest_overlap_max", "ngram_overlap"}
    assert 0 < copying["longest_overlap"]["held_out"] <= 11 and copying["longest_overlap_max"]["synthetic"] <= 11
    card = (out / "README.md").read_text()
    assert "Longest overlap" in card and "n-gram text classifier" in card


def test_a_long_document_is_cut_into_blocks_and_the_last_is_padded():
    from difftrain.modalities.text_prepare import padded_blocks

    assert padded_blocks(np.arange(5, dtype=np.int32), 2, 9).tolist() == [[0, 1], [2, 3], [4, 9]]
    assert padded_blocks(np.zeros(0, np.int32), 3, 9).tolist() == [[9, 9, 9]]


def test_text_trains_from_a_memory_mapped_corpus_in_the_same_order(tmp_path):
    """Token blocks stay on disk (a corpus larger than memory): batches read their rows, the ones in memory would be."""
    from difftrain.data.loader import ArrayBatches

    ds = prepare("sums", tmp_path / "sums", kind="text", block=16, progress=False)
    assert isinstance(ds.train_data, np.memmap)
    streamed = ArrayBatches(ds.train_data, None, ds.modality, seed=3, device=torch.device("cpu"))
    in_memory = ArrayBatches(np.asarray(ds.train_data), None, ds.modality, seed=3, device=torch.device("cpu"))
    assert streamed.streamed and not in_memory.streamed
    for start in (0, 50, len(ds.train_data) - 5):  # the last crosses into the next epoch
        assert torch.equal(streamed.batch(start, 32)[0], in_memory.batch(start, 32)[0])
    positions = torch.tensor([7, 3, len(ds.train_data) + 1])
    assert torch.equal(streamed.at(positions)[0], in_memory.at(positions)[0])


def test_temperature_draws_from_the_sharpened_distribution():
    from difftrain.diffusion.masked import sample_masked
    from difftrain.sampling import SamplingSpec

    p = np.array([0.5, 0.3, 0.2])
    denoiser = MaskedDenoiser(FixedNet(p.tolist(), p.tolist()), MaskedDiffusion(3))
    given = torch.full((2000, 4), 3)
    drawn = sample_masked(denoiser, given, 4, cond={"label": torch.zeros(2000, dtype=torch.long)}, temperature=0.5,
                          generator=torch.Generator().manual_seed(0))
    expected = p ** 2 / (p ** 2).sum()  # p^(1/T), renormalised
    assert np.abs(np.bincount(drawn.numpy().ravel(), minlength=3) / drawn.numel() - expected).max() < 0.02
    with pytest.raises(UserError, match="--temperature 0.5 draws tokens"):
        SamplingSpec(sampler="heun", temperature=0.5).check()
