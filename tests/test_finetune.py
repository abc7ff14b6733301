"""Starting from pre-trained weights: the load report, classes, replay, forgetting, export and back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difftrain.config import ModelConfig, UNetConfig, load_config
from difftrain.data import prepare_dataset
from difftrain.data.loader import ArrayBatches, MixedBatches
from difftrain.errors import UserError
from difftrain.modalities import modality_for
from difftrain.models import build_network
from difftrain.pretrained.source import Pretrained, open_pretrained
from difftrain.pretrained.transfer import CHARACTER_ROWS, caption_positions, character_rows, class_rows, label_space, transfer_weights
from difftrain.store.run import open_run
from difftrain.training.trainer import train
from tests.conftest import tiny_overrides
from tests.test_cli import cli, difftrain


def said(result) -> str:
    """stderr with the terminal's line wrapping undone."""
    return " ".join(result.stderr.split())


def source(class_names, rows, has_null=True) -> Pretrained:
    weights = {} if rows is None else {"class_embedding.weight": rows}
    return Pretrained("test source", weights, {}, None, class_names, has_null)


def test_new_classes_start_as_the_unconditional_row_and_old_ones_keep_theirs():
    rows = torch.arange(12.0).view(4, 3)  # classes a, b, c, then the "no label" row
    src = source(["a", "b", "c"], rows)
    names = label_space(src, ["c", "d"])
    assert names == ["a", "b", "c", "d"]
    out, note = class_rows(src, names, torch.zeros(5, 3))
    assert torch.equal(out[:3], rows[:3])  # a, b, c kept by name
    assert torch.equal(out[3], rows[3]) and torch.equal(out[4], rows[3])  # d and "no label" = the old "no label"
    assert "1 new (d)" in note


def test_classes_are_matched_by_name_not_position():
    rows = torch.arange(12.0).view(4, 3)
    out, _ = class_rows(source(["a", "b", "c"], rows), ["c", "a"], torch.zeros(3, 3))
    assert torch.equal(out[0], rows[2]) and torch.equal(out[1], rows[0])


def test_an_unconditional_source_gets_a_zero_embedding_and_a_foreign_one_a_mean_null_row():
    out, note = class_rows(source(None, None), ["a", "b"], torch.ones(3, 3))
    assert torch.equal(out, torch.zeros(3, 3)) and "unconditional" in note
    rows = torch.tensor([[0.0, 2.0], [2.0, 4.0], [4.0, 6.0]])
    foreign = source(None, rows, has_null=False)
    names = label_space(foreign, ["cat", "dog"])
    out, note = class_rows(foreign, names, torch.zeros(3, 2))
    assert torch.equal(out[:2], rows[:2]) and torch.equal(out[2], torch.tensor([2.0, 4.0]))  # by index; null = mean
    assert "matched by index" in note and "1 source row(s) beyond your classes dropped" in note


def test_caption_characters_are_matched_by_character_and_new_ones_start_at_the_mean():
    rows = torch.arange(12.0).view(4, 3)  # "a", "b", "c", then the padding ""
    src = Pretrained("captions", {CHARACTER_ROWS: rows}, {}, None, None, False, caption_characters=["a", "b", "c", ""])
    out, note = character_rows(src, ["b", "z", ""], torch.zeros(3, 3))
    assert torch.equal(out[0], rows[1]) and torch.equal(out[2], rows[3]) and torch.equal(out[1], rows.mean(0))
    assert note == "2 characters kept, 1 new ('z') starting at the mean of the source's"
    longer, note = caption_positions(torch.ones(2, 3), torch.zeros(4, 3))
    assert torch.equal(longer, torch.tensor([[1.0] * 3] * 2 + [[0.0] * 3] * 2)) and "at most 4 characters" in note
    assert torch.equal(caption_positions(torch.ones(5, 3), torch.zeros(4, 3))[0], torch.ones(4, 3))
    assert caption_positions(torch.ones(4, 3), torch.zeros(4, 3))[1] == ""  # the same length: nothing to say


TINY = modality_for({"kind": "image", "shape": [2, 2, 1]})  # the 2x2 grey images of the replay tests


def tiny_net(num_classes: int, channels=(16, 32)):
    cfg = ModelConfig(channels=list(channels), attention=[False, True], layers_per_block=1, norm_groups=8, attention_head_dim=8)
    return build_network(cfg, modality_for({"kind": "image", "shape": [8, 8, 1]}), num_classes)


def test_a_load_that_drops_weights_is_refused_unless_allowed():
    torch.manual_seed(0)
    src_net = tiny_net(0, channels=(16, 32))
    src = Pretrained("a 16/32 UNet", src_net.unet.state_dict(), {}, None, None, False)
    target = tiny_net(0, channels=(16, 48))
    with pytest.raises(UserError) as e:
        transfer_weights(target.unet, src, [])
    assert "shape-mismatched" in str(e.value) and "--allow-partial" in str(e.value)
    before = {k: v.clone() for k, v in target.unet.state_dict().items()}
    report = transfer_weights(target.unet, src, [], allow_partial=True)
    assert report.reshaped and report.matched
    after = target.unet.state_dict()
    for name in report.matched:
        assert torch.equal(after[name], src.weights[name])
    for name, _, _ in report.reshaped:
        assert torch.equal(after[name], before[name])


def test_old_diffusers_attention_names_are_renamed_as_diffusers_does():
    net = tiny_net(0)
    old_names = {k.replace("attentions.0.to_q", "attentions.0.query").replace("attentions.0.to_out.0", "attentions.0.proj_attn"): v
                 for k, v in net.unet.state_dict().items()}
    assert any(".query." in k for k in old_names)
    report = transfer_weights(tiny_net(0).unet, Pretrained("old diffusers", old_names, {}, None, None, False), [])
    assert report.complete


def test_replay_stream_follows_its_rule():
    """Position q is old item floor(qf) when floor((q+1)f) > floor(qf), else new item q - floor(qf)."""
    import math

    new = ArrayBatches(np.arange(13 * 4, dtype=np.uint8).reshape(13, 2, 2, 1), np.arange(13), TINY, seed=1, device=torch.device("cpu"))
    old = ArrayBatches(np.arange(7 * 4, dtype=np.uint8).reshape(7, 2, 2, 1) + 100, np.arange(7) + 50, TINY, seed=2, device=torch.device("cpu"))
    x, y = MixedBatches(new, old, 0.3).batch(17, 40)
    for i, q in enumerate(range(17, 57)):
        before = math.floor(q * 0.3)
        source, position = (old, before) if math.floor((q + 1) * 0.3) > before else (new, q - before)
        x_expected, y_expected = source.at(torch.tensor([position]))
        assert torch.equal(x[i], x_expected[0]) and y[i] == y_expected[0]


def test_replay_mixes_an_exact_fraction_whatever_the_batch_cut():
    new = ArrayBatches(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10), TINY, seed=0, device=torch.device("cpu"))
    old = ArrayBatches(np.full((7, 2, 2, 1), 255, np.uint8), np.arange(7) + 100, TINY, seed=0, device=torch.device("cpu"))
    mixed = MixedBatches(new, old, 0.25)
    x, y = mixed.batch(0, 40)
    assert set(y[y < 100].tolist()) == set(range(10))
    assert int((y >= 100).sum()) == 10  # a quarter of the stream is old data
    assert ((x[y >= 100] == 1).all() and (x[y < 100] == -1).all())  # images travel with their labels
    for cut in (1, 3, 16):
        parts = [mixed.batch(s, min(cut, 40 - s)) for s in range(0, 40, cut)]
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    # Each stream keeps its own epoch order: the first 30 new images are 3 epochs of the 10.
    new_labels = y[y < 100]
    assert torch.equal(new_labels[:10].sort().values, torch.arange(10))


@pytest.fixture(scope="module")
def split_digits(tmp_path_factory):
    """digits 0-4 (old task) and 5-9 (new task)."""
    root = tmp_path_factory.mktemp("split")
    old = prepare_dataset("digits", root / "d04", classes=list("01234"), test_fraction=0.2, progress=False)
    new = prepare_dataset("digits", root / "d59", classes=list("56789"), test_fraction=0.2, progress=False)
    return old.path, new.path


@pytest.fixture(scope="module")
def old_run(tmp_path_factory, split_digits):
    run = tmp_path_factory.mktemp("runs") / "old"
    cli("train", "--out", run, "--no-progress", *tiny_overrides(split_digits[0], **{"train.duration_steps": 6}))
    return run


DIT = {"model.arch": "dit", "model.dit.width": 32, "model.dit.depth": 1, "model.dit.heads": 2, "model.dit.embedding_dim": 16}


def test_a_dit_run_fine_tunes_with_lora_on_new_classes_and_starts_as_its_source(tmp_path, split_digits):
    old, new = split_digits
    source = tmp_path / "dit"
    cli("train", "--out", source, "--no-progress", *tiny_overrides(old, **DIT))
    tuned = tmp_path / "tuned"
    # One step at a learning rate ~1e-11 (a warm-up of 10^9 images): LoRA's zero start keeps the source's network.
    cli("train", "--init", source, "--out", tuned, "--no-progress", *fine_tune_overrides(
        new, **{"finetune.lora_rank": 4, "train.duration_steps": 1, "optim.warmup_images": 10**9}))
    init = json.loads((tuned / "init.json").read_text())
    assert not (init["missing"] or init["unexpected"] or init["reshaped"])
    assert init["classes"].startswith("5 kept, 5 new (5, 6, 7, 8, 9)") and 0 < init["trainable_parameters"] < init["parameters"]
    before, after = (open_run(r) for r in (source, tuned))
    assert after.config.model.arch == "dit" and after.class_names == list("0123456789")
    x, sigma, labels = torch.randn(5, 1, 8, 8), torch.full((5,), 0.3), torch.arange(5)
    with torch.no_grad():
        a = before.denoiser(before.checkpoint())(x, sigma, {"label": labels})
        b = after.denoiser(after.checkpoint())(x, sigma, {"label": labels})
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()  # the old classes 0-4, rows kept by name
    cli("sample", tuned, "--n", "2", "--class", "7", "--steps", "2", "--out", tmp_path / "s.npz")


def test_prepare_keeps_the_named_classes_relabelled(split_digits):
    manifest = json.loads((split_digits[1] / "manifest.json").read_text())
    assert manifest["class_names"] == list("56789")
    labels = np.load(split_digits[1] / "train_labels.npy")
    assert set(labels.tolist()) == set(range(5))


def fine_tune_overrides(data, **extra):
    # Only training settings: the network comes from the source.
    return [o for o in tiny_overrides(data, **extra) if not o.startswith("model.")]


def test_continual_training_with_replay_keeps_old_classes_and_reports_forgetting(tmp_path, split_digits, old_run):
    old, new = split_digits
    run = tmp_path / "continued"
    result = cli("train", "--init", old_run, "--replay", 0.25, "--out", run, "--no-progress",
                 *fine_tune_overrides(new, **{"optim.lr": 1e-12, "optim.warmup_images": 0, "train.duration_steps": 1,
                                              "eval.n_samples": 50, "eval.metrics": "[fid]"}))
    assert "matched" in result.output and "5 new (5, 6, 7, 8, 9)" in result.output
    assert open_run(run).class_names == list("0123456789")
    init = json.loads((run / "init.json").read_text())
    assert init["missing"] == [] and init["unexpected"] == [] and init["reshaped"] == []
    # With a vanishing learning rate the weights are the source's (old classes' rows included).
    src = load_file(sorted((old_run / "checkpoints").glob("ckpt-*"))[-1] / "ema.safetensors")
    got = load_file(sorted((run / "checkpoints").glob("ckpt-*"))[-1] / "model.safetensors")
    for name, value in src.items():
        if name != "unet.class_embedding.weight":
            torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0)
    torch.testing.assert_close(got["unet.class_embedding.weight"][:5], src["unet.class_embedding.weight"][:5], atol=1e-6, rtol=0)
    forgetting = json.loads((run / "forgetting.json").read_text())
    assert {"old_before", "old_after", "new_after", "old_change"} <= forgetting.keys()
    assert forgetting["old_change"]["fid"] == pytest.approx(forgetting["old_after"]["fid"] - forgetting["old_before"]["fid"])
    from difftrain.report.card import write_report

    card = write_report(run).read_text()
    assert "## Starting point" in card and "old data, before" in card
    # Evaluating against the old data maps its labels onto the model's classes.
    records = json.loads(cli("eval", run, "--data", old, "--n", 20, "--metrics", "cas", "--json").stdout)
    assert records[0]["cas"] < records[0]["cas_real"]  # 6 training steps: samples teach less than as many real images


def test_a_setting_that_contradicts_the_source_is_refused(tmp_path, split_digits, old_run):
    r = difftrain("train", "--init", old_run, "--out", tmp_path / "x", "--no-progress", "model.layers_per_block=2",
                  *fine_tune_overrides(split_digits[1]))
    assert r.returncode == 2 and "model.unet.layers_per_block" in said(r) and "contradicts --init" in said(r)
    assert not (tmp_path / "x" / "checkpoints").exists()
    # The same setting in a YAML file, nested under its architecture's section, is as explicit.
    (tmp_path / "mine.yaml").write_text("model:\n  unet:\n    layers_per_block: 2\n")
    r = difftrain("train", "--init", old_run, "--config", tmp_path / "mine.yaml", "--out", tmp_path / "y", "--no-progress",
                  *fine_tune_overrides(split_digits[1]))
    assert r.returncode == 2 and "model.unet.layers_per_block" in said(r) and "contradicts --init" in said(r)


def test_a_corrupted_source_checkpoint_is_a_clear_error(tmp_path, split_digits, old_run):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(old_run, broken)
    ema = sorted((broken / "checkpoints").glob("ckpt-*"))[-1] / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:100])
    r = difftrain("train", "--init", broken, "--out", tmp_path / "y", "--no-progress", *fine_tune_overrides(split_digits[1]))
    assert r.returncode == 2 and "corrupted or truncated" in said(r), r.stderr
    r = difftrain("train", "--init", tmp_path / "nothing", "--out", tmp_path / "y", "--no-progress")
    assert r.returncode == 2 and "no such file" in said(r)


def test_export_loads_in_diffusers_and_round_trips(tmp_path, split_digits, old_run):
    from diffusers import DiffusionPipeline

    folder = tmp_path / "exported"
    cli("export", old_run, "--out", folder)
    pipe = DiffusionPipeline.from_pretrained(folder)
    images = pipe(batch_size=2, class_labels=[0, 4], num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
    # Importing it again gives the same network, formulation and classes.
    back = open_pretrained(folder)
    original = open_pretrained(old_run)
    assert back.class_names == original.class_names and back.has_null_label
    assert back.diffusion == original.diffusion  # the formulation and the training choices
    assert back.model["unet"]["channels"] == original.model["unet"]["channels"] and back.model["unet"]["unet_options"] == {}
    for name, value in original.weights.items():
        assert torch.equal(back.weights[name], value), name
    r = difftrain("export", old_run, "--out", folder)
    assert r.returncode == 2 and "exists" in said(r)


def test_lora_fine_tune_trains_few_parameters_resumes_and_exports(tmp_path, split_digits, old_run):
    run = tmp_path / "lora"
    overrides = fine_tune_overrides(split_digits[0], **{"finetune.lora_rank": 2, "train.duration_steps": 4,
                                                        "finetune.forgetting": "false"})
    cfg = load_config(overrides=overrides)
    cfg.finetune.init = str(old_run)
    train(cfg, run, progress=False, stop_at_step=2)
    init = json.loads((run / "init.json").read_text())
    assert 0 < init["trainable_parameters"] < init["parameters"] / 5
    saved = load_config(base=open_run(run).config)
    assert train(saved, run, progress=False, resume=True).steps == 4
    # The frozen base weights did not move; the merged network differs from the source by the LoRA update only.
    run_ = open_run(run)
    merged = run_.denoiser(run_.checkpoint()).net
    assert set(merged.state_dict()) == set(tiny_net(5).state_dict())
    cli("export", run, "--out", tmp_path / "lora-exported")
    assert (tmp_path / "lora-exported" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_an_unconditional_source_becomes_conditional_with_its_output_unchanged(tmp_path, split_digits):
    src = tmp_path / "uncond"
    cli("train", "--out", src, "--no-progress", *tiny_overrides(split_digits[0], **{"model.conditional": "false"}))
    source_ = open_pretrained(src)
    net = tiny_net(5)
    report = transfer_weights(net.unet, source_, list("56789"))
    assert report.complete
    plain = tiny_net(0)
    plain.unet.load_state_dict(source_.weights)
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.3)
    with torch.no_grad():
        for label in (0, 4, 5):
            torch.testing.assert_close(net(x, t, {"label": torch.full((3,), label)}), plain(x, t), atol=1e-5, rtol=0)


def test_a_foreign_diffusers_pipeline_is_honoured_and_fine_tuned(tmp_path, split_digits):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    # A DDPM model as another tool would save it, with UNet options difftrain does not name.
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, attention_head_dim=8, freq_shift=1, flip_sin_to_cos=False)
    scheduler = DDPMScheduler(num_train_timesteps=500, beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02,
                              prediction_type="v_prediction")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "foreign")
    run = tmp_path / "from-foreign"
    result = cli("train", "--init", tmp_path / "foreign", "--out", run, "--no-progress",
                 *fine_tune_overrides(split_digits[1], **{"train.duration_steps": 2}))
    assert "unconditional: a zero class embedding" in " ".join(result.output.split())
    cfg = open_run(run).config
    assert cfg.model.unet.unet_options == {"freq_shift": 1, "flip_sin_to_cos": False}
    assert (cfg.diffusion.formulation, cfg.diffusion.prediction, cfg.diffusion.num_timesteps,
            cfg.diffusion.beta_schedule, cfg.diffusion.weighting) == ("vp", "v", 500, "scaled_linear", "uniform")
    init = json.loads((run / "init.json").read_text())
    assert init["matched"] == len(unet.state_dict()) and init["missing"] == []  # the class embedding is new, not matched
    # A schedule difftrain cannot honour stops with the key named.
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2")).save_pretrained(tmp_path / "cosine")
    r = difftrain("train", "--init", tmp_path / "cosine", "--out", tmp_path / "z", "--no-progress",
                  *fine_tune_overrides(split_digits[1]))
    assert r.returncode == 2 and "beta_schedule" in said(r)


def test_replayed_and_new_labels_reach_the_model_as_its_own_classes():
    device = torch.device("cpu")
    new = ArrayBatches(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10) % 5, TINY, seed=0, device=device, to_model=[5, 6, 7, 8, 9])
    old = ArrayBatches(np.full((10, 2, 2, 1), 255, np.uint8), np.arange(10) % 5, TINY, seed=0, device=device, to_model=[0, 1, 2, 3, 4])
    x, y = MixedBatches(new, old, 0.5).batch(0, 20)
    assert set(y[x[:, 0, 0, 0] > 0].tolist()) == {0, 1, 2, 3, 4}  # old images carry old classes
    assert set(y[x[:, 0, 0, 0] < 0].tolist()) == {5, 6, 7, 8, 9}


def test_resumed_lora_replay_fine_tune_equals_uninterrupted(tmp_path, split_digits, old_run):
    from tests.test_training import assert_same, weights

    overrides = fine_tune_overrides(split_digits[1], **{"finetune.lora_rank": 2, "finetune.replay": 0.25, "train.duration_steps": 4,
                                                        "finetune.forgetting": "false", "model.dropout": 0.1})
    cfg = load_config(overrides=[*overrides, f"finetune.init={old_run}"])
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_at_step=2)
    train(open_run(tmp_path / "split").config, tmp_path / "split", progress=False, resume=True)
    assert_same(weights(tmp_path / "full"), weights(tmp_path / "split"), atol=1e-6, rtol=1e-5)
    # LoRA trained; the frozen base weights are the source's.
    w = weights(tmp_path / "full")
    src = load_file(sorted((old_run / "checkpoints").glob("ckpt-*"))[-1] / "ema.safetensors")
    name = "unet.mid_block.resnets.0.conv1"
    assert torch.equal(w[f"{name}.base_layer.weight"], src[f"{name}.weight"])
    assert w[f"{name}.lora_B.default.weight"].abs().sum() > 0


def test_mistakes_with_replay_and_bare_unets_are_clear(tmp_path, split_digits, old_run):
    from diffusers import UNet2DModel

    r = difftrain("train", "--replay", 0.3, "--out", tmp_path / "a", "--no-progress", *fine_tune_overrides(split_digits[1]))
    assert r.returncode == 2 and "--init RUN" in said(r)
    r = difftrain("train", "--init", old_run, "--replay", 1.5, "--out", tmp_path / "b", "--no-progress", *fine_tune_overrides(split_digits[1]))
    assert r.returncode == 2 and "finetune.replay" in said(r)
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), norm_num_groups=8,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(tmp_path / "bare")
    r = difftrain("train", "--init", tmp_path / "bare", "--out", tmp_path / "c", "--no-progress", *fine_tune_overrides(split_digits[1]))
    assert r.returncode == 2 and "diffusion.formulation=" in said(r), said(r)


def test_any_unet2dmodel_config_is_rebuilt_exactly():
    from diffusers import UNet2DModel

    from difftrain.models.unet import model_fields, unet_arguments

    # Heads that do not divide the channels, another activation and time embedding: all legal in diffusers.
    unet = UNet2DModel(block_out_channels=(48, 96), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=16, attention_head_dim=64,
                       act_fn="mish", time_embedding_type="fourier", dropout=0.1)
    fields = model_fields(dict(unet.config))
    rebuilt = UNet2DModel(**unet_arguments(UNetConfig(**fields), (3, 32, 32), 0))
    assert {k: v for k, v in rebuilt.config.items() if not k.startswith("_") and k != "sample_size"} == \
        {k: v for k, v in unet.config.items() if not k.startswith("_") and k != "sample_size"}
    assert rebuilt.state_dict().keys() == unet.state_dict().keys()
