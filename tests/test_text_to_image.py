"""Text-to-image: captions read and checked line by line, tokenized and kept beside the images; the caption
conditioner's dropout; a DiT that hears its caption through the encoder and cross-attention; training and sampling
from a prompt through the CLI, with the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difftrain.conditioning import Captions, conditions_of_network
from difftrain.config import DiTConfig
from difftrain.data import load_dataset, prepare_dataset
from difftrain.errors import UserError
from difftrain.models.dit import build_dit
from tests.conftest import tiny_overrides
from tests.test_cli import cli, difftrain

TINY = DiTConfig(width=32, depth=2, heads=2, patch=2, embedding_dim=16, caption_depth=1)


def write_folder(root: Path, names: list[str]) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / name)


def test_captions_are_read_checked_and_kept_beside_the_images(tmp_path):
    src = tmp_path / "src"
    write_folder(src, [f"img{i}.png" for i in range(6)])
    lines = [json.dumps({"file_name": f"img{i}.png", "text": f"a picture of {i}"}) for i in range(5)]  # img5: none
    lines += ["{not json", json.dumps({"file_name": "gone.png", "text": "no such image"}),
              json.dumps({"file_name": "img0.png", "text": "a second caption"}), json.dumps({"file_name": "img1.png"})]
    (src / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    before = {p: p.read_bytes() for p in src.iterdir()}

    ds = prepare_dataset(src, tmp_path / "data", captions=src / "metadata.jsonl", test_fraction=0.2, progress=False)
    rejected = {r["path"]: r["reason"] for r in ds.manifest["rejected"]}
    assert rejected["metadata.jsonl:6"].startswith("not JSON")
    assert "second caption of img0.png" in rejected["metadata.jsonl:8"]
    assert "file_name" in rejected["metadata.jsonl:9"]
    assert rejected["img5.png"] == "no caption in metadata.jsonl"
    assert rejected["metadata.jsonl: gone.png"] == "a caption of an image that is not in the source"
    assert "metadata.jsonl" not in rejected  # the captions file is no rejected image
    assert ds.manifest["count"] == {"train": 4, "test": 1}

    again = load_dataset(tmp_path / "data")
    rows = np.concatenate([again.train_captions, again.test_captions])
    assert rows.dtype == np.int64 and rows.shape == (5, len("a picture of 0"))
    assert sorted(again.modality.captions.decode(rows)) == [f"a picture of {i}" for i in range(5)]
    assert {p: p.read_bytes() for p in src.iterdir()} == before  # the source is never touched

    with pytest.raises(UserError, match="rejected in strict mode"):
        prepare_dataset(src, tmp_path / "strict", captions=src / "metadata.jsonl", strict=True, progress=False)
    with pytest.raises(UserError, match="no image of .* has a caption"):
        (tmp_path / "other.jsonl").write_text(json.dumps({"file_name": "elsewhere/x.png", "text": "x"}) + "\n")
        prepare_dataset(src, tmp_path / "none", captions=tmp_path / "other.jsonl", progress=False)


def test_prompts_become_padded_rows_and_bad_prompts_are_refused(tmp_path):
    ds = prepare_dataset("digit-pairs", tmp_path / "pairs", limit=200, progress=False)
    tokens = ds.modality.captions
    rows = tokens.encode(["a 3 to the left of a 7", "3 then 7"])
    assert rows.shape == (2, tokens.length)
    assert (rows[1, len("3 then 7"):] == tokens.pad_id).all() and (rows[1, :8] != tokens.pad_id).all()
    assert tokens.decode(rows) == ["a 3 to the left of a 7", "3 then 7"]
    with pytest.raises(UserError, match="'Z', which no caption of the training data had"):
        tokens.encode(["a Z"])
    with pytest.raises(UserError, match="characters; this model read captions of at most"):
        tokens.encode(["a 3 " * 40])


def test_caption_dropout_and_the_null_caption_are_padding():
    captions = Captions(pad_id=9)
    cond = captions.encode(torch.tensor([[1, 2, 9], [3, 9, 9]]))
    dropped = captions.drop(cond, torch.tensor([True, False]))
    assert dropped["caption"].tolist() == [[1, 2, 9], [9, 9, 9]]
    assert captions.null_like(cond)["caption"].tolist() == [[9, 9, 9], [9, 9, 9]]


def test_a_captioned_dit_starts_at_zero_and_hears_its_caption():
    torch.manual_seed(0)
    net = build_dit(TINY, (1, 8, 16), 0, caption_vocab=12, caption_length=5, caption_pad=11)
    assert net.caption_pad == 11 and conditions_of_network(net).labels.key == "caption"
    x, sigma = torch.randn(2, 1, 8, 16), torch.rand(2)
    a = {"caption": torch.tensor([[1, 2, 3, 11, 11]] * 2)}
    assert torch.count_nonzero(net(x, sigma, a)) == 0  # adaLN-Zero, zero cross-attention output, zero read-out
    _, pooled = net.captions(torch.full((1, 5), 11))
    assert torch.count_nonzero(pooled) == 0  # the empty caption adds nothing to the embedding
    with torch.no_grad():  # as after some training: every zero-initialised layer moved
        for p in net.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0, 0.1)
    b = {"caption": torch.tensor([[4, 5, 6, 7, 11]] * 2)}
    assert not torch.allclose(net(x, sigma, a), net(x, sigma, b))
    # Only through the captions: with the encoder's output fixed, the caption ids no longer matter.
    net.captions.forward = lambda ids: (torch.zeros(len(ids), 5, 32), torch.zeros(len(ids), 32))
    assert torch.equal(net(x, sigma, a), net(x, sigma, b))


def caption_run(pairs_dir: Path, run: Path, *flags, **extra) -> list[str]:
    """`train --preset text2image` of a tiny DiT (or with model.arch=unet, a tiny UNet) for a few steps."""
    return ["train", "--preset", "text2image", "--out", run, *flags, *tiny_overrides(pairs_dir, **{
        "model.dit.width": 32, "model.dit.depth": 1, "model.dit.heads": 2, "model.dit.embedding_dim": 16,
        "model.dit.caption_depth": 1, "model.unet.caption_width": 32, "model.unet.caption_depth": 1,
        "train.duration_steps": 4, "train.grid_every_images": 64, **extra})]


def test_train_on_captions_and_sample_from_a_prompt(pairs_dir, tmp_path):
    run = tmp_path / "cap"
    cli(*caption_run(pairs_dir, run))
    assert json.loads((run / "dataset.json").read_text())["modality"]["captions"]["length"] > 0
    assert list((run / "samples").glob("grid-*.png"))  # eight captions of the data, one per row
    out = tmp_path / "s.npz"
    cli("sample", run, "--prompt", "a 3 to the left of a 7", "--n", "3", "--steps", "2", "--out", out)
    with np.load(out) as f:
        assert f["images"].shape == (3, 8, 16, 1) and "labels" not in f.files
        assert json.loads(str(f["meta"]))["prompts"] == ["a 3 to the left of a 7"]
    assert out.with_suffix(".png").is_file()

    unguided = difftrain("sample", run, "--n", "2", "--out", tmp_path / "u.npz")  # the preset guides: 2
    assert unguided.returncode == 2 and "give one with --prompt" in " ".join(unguided.stderr.split())
    cli("sample", run, "--n", "2", "--guidance", "1", "--steps", "2", "--out", tmp_path / "u.npz")
    odd = difftrain("sample", run, "--prompt", "a Z", "--n", "2", "--out", tmp_path / "z.npz")
    assert odd.returncode == 2 and "'Z', which no caption" in " ".join(odd.stderr.split())

    # Evaluation samples for the held-out captions and scores prompt following beside its floor: the dataset's classifier
    # on the real image of each caption (a weak one here: 300 images of 100 pairs, three epochs).
    result = cli("eval", run, "--n", "60", "--metrics", "fid", "--steps", "2", "--json")
    [record] = json.loads(result.stdout[result.stdout.index("["):])
    assert 0 <= record["label_agreement"] <= 1 and 0 <= record["label_agreement_floor"] <= 1
    with np.load(record["samples_file"]) as f:
        prompts = json.loads(str(f["meta"]))["prompts"]
    ds = load_dataset(pairs_dir)
    assert prompts == ds.modality.captions.decode(ds.test_captions)
    # --prompts: a prompt's class is that of the training images captioned so, when they agree on one.
    text = ds.modality.captions.decode(ds.train_captions[:2])
    (tmp_path / "prompts.txt").write_text("\n".join(text) + "\n\n")
    result = cli("eval", run, "--n", "20", "--metrics", "fid", "--steps", "2", "--prompts", tmp_path / "prompts.txt", "--json")
    [record] = json.loads(result.stdout[result.stdout.index("["):])
    assert "label_agreement" in record
    with np.load(record["samples_file"]) as f:
        assert json.loads(str(f["meta"]))["prompts"] == text

    # A guidance sweep: one record per weight, and the trade-off plotted.
    result = cli("eval", run, "--n", "20", "--metrics", "fid", "--steps", "2", "--guidance", "1,3", "--json")
    records = json.loads(result.stdout[result.stdout.index("["):])
    assert [r["guidance"] for r in records] == [1, 3] and all("label_agreement" in r for r in records)
    assert (run / "eval" / "metrics-vs-guidance.png").is_file()
    assert "metrics-vs-guidance.png" in (run / "README.md").read_text()
    bad = difftrain("eval", run, "--guidance", "1,x")
    assert bad.returncode == 2 and "give numbers separated by commas" in " ".join(bad.stderr.split())


def test_a_captioned_dit_run_fine_tunes_on_captions_with_new_characters_and_another_size(pairs_dir, tmp_path):
    source = tmp_path / "cap"
    cli(*caption_run(pairs_dir, source, "--no-progress"))
    src = tmp_path / "src"
    write_folder(src, [f"img{i}.png" for i in range(20)])  # 8x8 images, where the source drew 8x16
    (src / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"img{i}.png", "text": f"Z{i % 3}"}) + "\n"
                                                for i in range(20)))
    prepare_dataset(src, tmp_path / "data", captions=src / "metadata.jsonl", test_fraction=0.2, progress=False)
    tuned = tmp_path / "tuned"
    result = cli(*caption_run(tmp_path / "data", tuned, "--init", source, "--no-progress", **{"finetune.lora_rank": 2}))
    # The old captions' other characters have no rows in this model: forgetting is not scored, and the run says why.
    assert "forgetting not measured: the old data's captions hold" in " ".join(result.output.split())
    init = json.loads((tuned / "init.json").read_text())
    assert not (init["missing"] or init["unexpected"] or init["reshaped"])
    # "0", "1", "2" and the padding keep their rows, "Z" starts at their mean; captions are 2 characters long now.
    assert init["captions"].startswith("4 characters kept, 1 new ('Z')") and "at most 2 characters" in init["captions"]
    assert 0 < init["trainable_parameters"] < init["parameters"]
    cli("sample", tuned, "--prompt", "Z1", "--n", "2", "--steps", "2", "--out", tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (2, 8, 8, 1)
    plain = difftrain("train", "--out", tmp_path / "p", "--init", source, *tiny_overrides(tmp_path / "data", **{
        "model.conditional": "false"}))
    assert plain.returncode == 2 and "is a text-to-image model, and this run reads no captions" in " ".join(plain.stderr.split())


def test_a_captioned_unet_hears_its_caption_through_cross_attention():
    from difftrain.config import UNetConfig
    from difftrain.models.unet_captions import build_captioned_unet

    torch.manual_seed(0)
    cfg = UNetConfig(channels=[16, 32], attention=[False, True], norm_groups=8, attention_head_dim=8, caption_width=32,
                     caption_depth=1)
    net = build_captioned_unet(cfg, (1, 8, 16), caption_vocab=12, caption_length=5, caption_pad=11)
    assert type(net.unet).__name__ == "UNet2DConditionModel" and conditions_of_network(net).labels.key == "caption"
    x, sigma = torch.randn(2, 1, 8, 16), torch.rand(2)
    a, b = {"caption": torch.tensor([[1, 2, 3, 11, 11]] * 2)}, {"caption": torch.tensor([[4, 5, 6, 7, 11]] * 2)}
    assert net(x, sigma, a).shape == x.shape and not torch.allclose(net(x, sigma, a), net(x, sigma, b))
    net.captions.forward = lambda ids: (torch.zeros(len(ids), 5, 32), torch.zeros(len(ids), 32))
    assert torch.equal(net(x, sigma, a), net(x, sigma, b))


def test_train_a_captioned_unet_and_an_unconditional_model_on_captions(pairs_dir, tmp_path):
    run = tmp_path / "unet"
    result = cli(*caption_run(pairs_dir, run, **{"model.arch": "unet", "model.unet.caption_width": 32,
                                                 "model.unet.caption_depth": 1, "train.hflip": "true"}))
    assert "mirrors the images but not their captions" in " ".join(result.output.split())
    cli("sample", run, "--prompt", "3 then 7", "--n", "2", "--steps", "2", "--out", tmp_path / "u.npz")
    refused = difftrain("export", run, "--out", tmp_path / "exported")  # pixels: Stable Diffusion decodes through a VAE
    assert refused.returncode == 2 and "train in an autoencoder's latent space" in " ".join(refused.stderr.split())
    # Unconditional on the same data: no caption encoder, and no --prompt.
    run = tmp_path / "plain"
    cli(*caption_run(pairs_dir, run, **{"model.conditional": "false", "sample.guidance": 1}))
    refused = difftrain("sample", run, "--prompt", "3 then 7", "--n", "2", "--out", tmp_path / "p.npz")
    assert refused.returncode == 2 and "was not trained on captioned images" in " ".join(refused.stderr.split())
