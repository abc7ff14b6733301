"""The utility and privacy reports of a synthetic dataset, on digits and on hand-made closed-form cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from difftrain.data import PreparedDataset, load_dataset
from difftrain.errors import UserError
from difftrain.modalities.image_classifier import fit_classifier
from difftrain.modalities import modality_for, segmentation
from difftrain.synth.privacy import dcr_summary, privacy
from difftrain.synth.report import report_markdown, write_report
from difftrain.evaluation.arms import paired_test
from difftrain.evaluation.convergence import check_schedule, train_to_convergence
from difftrain.evaluation.utility import balanced_order, classification_utility, validation_split


@pytest.fixture(scope="module")
def digits(digits_dir):
    return load_dataset(digits_dir)


def fake_synthetic(ds, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stand-ins for generated images: real training images shifted one pixel, with noise, and their labels."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds.train_data), n, replace=False)
    images = np.roll(ds.train_data[idx].astype(np.int64), 1, axis=2) + rng.integers(-25, 26, size=(n, 8, 8, 1))
    return np.clip(images, 0, 255).astype(np.uint8), ds.train_labels[idx]


def test_fit_classifier_steps_default_is_the_epoch_budget(digits):
    x, y = digits.train_data[:300], digits.train_labels[:300]
    by_epochs = fit_classifier(x, y, 10, epochs=2, seed=3)
    by_steps = fit_classifier(x, y, 10, steps=2 * (300 // 128), seed=3)
    for a, b in zip(by_epochs.state_dict().values(), by_steps.state_dict().values()):
        assert torch.equal(a, b)


def test_balanced_order_keeps_every_prefix_balanced():
    labels = np.repeat(np.arange(4), [10, 10, 10, 3])
    order = balanced_order(labels, seed=0)
    assert sorted(order) == list(range(len(labels)))
    assert np.array_equal(np.bincount(labels[order[:8]], minlength=4), [2, 2, 2, 2])
    # The small class runs out after 3 rounds; the others keep taking turns.
    assert np.array_equal(np.bincount(labels[order[:15]], minlength=4), [4, 4, 4, 3])


def test_the_paired_test_against_closed_forms():
    # Differences 0.02, 0.02, 0.03: mean 0.07/3, sd 0.01/sqrt(3), so t = 7 on 2 degrees of freedom.
    test = paired_test([0.90, 0.91, 0.92], [0.92, 0.93, 0.95])
    assert test["mean"] == pytest.approx(0.07 / 3)
    assert test["p_value"] == pytest.approx(1 - 7 / (7 ** 2 + 2) ** 0.5, rel=1e-9)  # two-sided, 2 degrees: 1 - t/sqrt(t^2+2)
    half = 4.302652729911275 * 0.01 / 3  # t(0.975, 2) * sd / sqrt(3)
    assert test["ci95"] == pytest.approx([0.07 / 3 - half, 0.07 / 3 + half])
    assert paired_test([0.5, 0.6], [0.6, 0.7])["p_value"] == 0.0  # differences that agree exactly
    assert paired_test([0.5, 0.6], [0.5, 0.6])["p_value"] == 1.0
    assert paired_test([0.5], [0.7]) == {"mean": pytest.approx(0.2), "ci95": None, "p_value": None}


def test_training_stops_after_patience_and_keeps_the_best_check():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scores = iter([0.1, 0.5, 0.4, 0.45, 0.3, 0.5, 0.2, 0.9])

    def step():  # the weight counts the steps taken
        with torch.no_grad():
            model.weight += 1

    result = train_to_convergence(model, optimizer, step, lambda: next(scores), max_steps=1000, every=10, patience=5,
                                  plateau=2, factor=0.5)
    assert result.stopped == "patience" and result.steps == 70 and result.best_step == 20  # 0.5 again is no gain
    assert model.weight.item() == 20  # the best check's weights
    assert optimizer.param_groups[0]["lr"] == 0.5  # halved once the score stalled for more than 2 checks
    capped = train_to_convergence(model, optimizer, step, lambda: 1.0, max_steps=25, every=10)
    assert capped.steps == 25 and capped.stopped == "max_steps" and [s for s, _ in capped.history] == [10, 20, 25]


def test_no_check_before_the_floor_stops_training_or_is_kept():
    """A small validation split's best can come at the first check, from a model that has barely trained."""
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scores = iter([1.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3])

    def step():
        with torch.no_grad():
            model.weight += 1

    result = train_to_convergence(model, optimizer, step, lambda: next(scores), max_steps=1000, every=10, min_steps=60,
                                  patience=5, plateau=100)
    assert result.best_step == 80 and model.weight.item() == 80  # not the first check's 1.0
    assert result.stopped == "patience" and result.steps == 130 and len(result.history) == 13
    assert check_schedule(130, 128) == (3000, 50, 500)  # 130 training digits (10% of the built-in set): 500 steps at least
    assert check_schedule(60_000, 128) == (28_140, 469, 4_690)  # a large set: 10 epochs at least
    assert check_schedule(130, 128, max_steps=80) == (80, 50, 80)  # a cap below the floor: the cap


def test_the_validation_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(3), [20, 10, 1])
    train, validation = validation_split(labels, seed=0)
    assert np.bincount(labels[validation], minlength=3).tolist() == [2, 1, 0]  # a single item stays to train on
    assert sorted(np.concatenate([train, validation])) == list(range(31))
    assert not np.array_equal(validation_split(labels, seed=1)[1], validation)


def test_the_judge_is_strong_on_real_digits(digits):
    """A judge a practitioner would accept: logistic regression gets about 0.96 on these digits."""
    train, validation = validation_split(digits.train_labels, seed=0)
    judge, training = digits.modality.fit_downstream(digits.train_data[train], digits.train_labels[train], 10, seed=0,
                                                     validation=(digits.train_data[validation],
                                                                 digits.train_labels[validation]), max_steps=600)
    assert judge.accuracy(digits.test_data, digits.test_labels) >= 0.97
    assert training["best_step"] <= training["steps"] <= 600


def test_classification_utility_on_digits_is_sensible_and_reproducible(digits):
    synth = fake_synthetic(digits, 400)
    real_train, real_test = (digits.train_data, digits.train_labels), (digits.test_data, digits.test_labels)
    stages = []
    u = classification_utility(real_train, real_test, synth, 10, seeds=(0, 1), steps=80, fractions=(0.5, 1.0),
                               progress=stages.append, modality=digits.modality)
    assert set(u["arms"]) == {"real", "synthetic", "real+synthetic"}
    assert u["steps"] == 80
    held = u["counts"]["real_validation"]  # a stratified 10% of the real training images, held back from every arm
    assert held == sum(round(0.1 * n) for n in np.bincount(real_train[1]))
    assert u["counts"] == {"real_train": len(real_train[0]) - held, "real_validation": held, "synthetic": 400,
                           "real_test": len(real_test[0])}
    assert u["judge_real_score"] == u["arms"]["real"]["accuracy_mean"]
    for arm in u["arms"].values():
        assert len(arm["accuracy_per_seed"]) == 2 and all(0.25 < a <= 1 for a in arm["accuracy_per_seed"])  # chance is 0.1
        assert arm["accuracy_mean"] == pytest.approx(np.mean(arm["accuracy_per_seed"]))
        assert arm["accuracy_std"] == pytest.approx(np.std(arm["accuracy_per_seed"], ddof=1))
    assert u["arms"]["real"]["accuracy_mean"] > 0.8
    assert u["arms"]["real+synthetic"]["images"] == len(real_train[0]) - held + 400
    for training in u["arms"]["real"]["training"]:  # each stopped early or at the cap, keeping its best check
        assert training["steps"] <= 80 and 0 < training["best_step"] <= training["steps"]
    assert [(p["fraction"], p["synthetic_images"]) for p in u["size_curve"]] == [(0.5, 200), (1.0, 400)]
    # The full-size point is the main arms, not a second training.
    assert u["size_curve"][1]["synthetic"]["accuracy"] == u["arms"]["synthetic"]["accuracy_per_seed"][0]
    assert len(stages) == 2 * 3 + 2 * 1  # the smaller curve point trains with the first seed only
    gain = u["arms"]["real+synthetic"]["accuracy_mean"] - u["arms"]["real"]["accuracy_mean"]
    assert u["real_plus_synthetic_gain"] == pytest.approx(gain)
    test = paired_test(u["arms"]["real"]["accuracy_per_seed"], u["arms"]["real+synthetic"]["accuracy_per_seed"])
    assert u["gain_p_value"] == test["p_value"] and u["synthetic_helps"] == (gain > 0 and test["p_value"] < 0.05)
    json.dumps(u)
    # The same seed gives the same numbers.
    again = classification_utility(real_train, real_test, synth, 10, seeds=(1,), steps=80, fractions=(1.0,),
                                   modality=digits.modality)
    for arm in ("real", "synthetic", "real+synthetic"):
        assert again["arms"][arm]["accuracy_per_seed"] == u["arms"][arm]["accuracy_per_seed"][1:]


def test_the_real_share_sets_how_often_the_mixed_arm_draws_real_images(digits):
    # Synthetic images that can only harm: copies of training digits labelled as the next class, so that the judge
    # cannot tell them from the real ones and learns whichever label it sees more often.
    idx = np.random.default_rng(0).choice(len(digits.train_data), 1200, replace=False)
    wrong = (digits.train_data[idx], (digits.train_labels[idx] + 1) % 10)
    real_train, real_test = (digits.train_data, digits.train_labels), (digits.test_data, digits.test_labels)
    by_count, mostly_real = (classification_utility(real_train, real_test, wrong, 10, seeds=(0,), steps=300,
                                                    fractions=(1.0,), real_share=share, modality=digits.modality)
                             for share in (None, 0.95))
    assert by_count["real_share"] is None and mostly_real["real_share"] == 0.95
    assert "95% of the time" in mostly_real["fairness"] and "of the time" not in by_count["fairness"]
    mixed = [u["arms"]["real+synthetic"]["accuracy_mean"] for u in (by_count, mostly_real)]
    # Drawn by count, the wrong labels are nearly half of what the judge sees; at a real share of 0.95, a twentieth.
    assert mixed[0] < 0.75 and mixed[1] > 0.9
    # The share weights only the mixed arm: the real and synthetic arms train as before.
    for arm in ("real", "synthetic"):
        assert mostly_real["arms"][arm]["accuracy_per_seed"] == by_count["arms"][arm]["accuracy_per_seed"]
    with pytest.raises(UserError, match="real share .* between 0 and 1"):
        classification_utility(real_train, real_test, wrong, 10, real_share=1.0, modality=digits.modality)


def test_classification_utility_refuses_labels_outside_the_classes(digits):
    images, labels = fake_synthetic(digits, 20)
    with pytest.raises(UserError, match="synthetic images: label 10"):
        classification_utility((digits.train_data, digits.train_labels), (digits.test_data, digits.test_labels),
                               (images, labels + 1), 10, steps=1, modality=digits.modality)


IMAGES_2x2 = modality_for({"kind": "image", "shape": [2, 2, 1]})


def constant(values, size: int = 2) -> np.ndarray:
    """uint8 (N, size, size, 1) images, image i all `values[i]`: L2 distances in [0, 1] are size * |a - b| / 255."""
    return np.array(values, np.uint8)[:, None, None, None] * np.ones((1, size, size, 1), np.uint8)


def test_dcr_of_a_hand_made_case_in_closed_form():
    train = constant([0, 255, 128])
    held_out = constant([10, 20, 30, 40, 50])  # nearest training image: the black one, at 2 v / 255
    # Copies of two training images; 5 (near black, far from the rest: memorized); 64 (halfway: a tie, not
    # memorized); 90 (nearest 128 at 76/255, next black at 180/255: not below a third).
    synth = constant([0, 255, 5, 64, 90])
    summary, result, held_out_dcr = privacy(synth, train, held_out, IMAGES_2x2)
    assert held_out_dcr == pytest.approx(np.array([20, 40, 60, 80, 100]) / 255)
    # Linear-interpolation quantiles of 5 points: position q * 4.
    assert summary["held_out_dcr"] == pytest.approx({"p1": 20.8 / 255, "p5": 24 / 255, "p25": 40 / 255, "p50": 60 / 255})
    assert summary["held_out_p5"] == pytest.approx(24 / 255)
    assert result.d1 == pytest.approx(np.array([0, 0, 10, 128, 76]) / 255)
    assert summary["synthetic_dcr"]["p50"] == pytest.approx(10 / 255)
    assert summary["fraction_below_held_out_p5"] == pytest.approx(3 / 5)
    assert summary["exact_copies"] == 2 and summary["held_out_exact_copies"] == 0
    assert summary["memorized"] == 3 and summary["memorized_fraction"] == pytest.approx(3 / 5)


def test_fraction_below_threshold_counts_strictly_below():
    held_out = np.arange(1, 101, dtype=np.float64)  # 5th percentile: 5.95
    synth = np.array([0.0, 5.0, 5.95, 6.0, 50.0])
    summary = dcr_summary(synth, held_out)
    assert summary["held_out_p5"] == pytest.approx(5.95)
    assert summary["fraction_below_held_out_p5"] == pytest.approx(2 / 5)
    assert summary["exact_copies"] == 1 and "memorized_fraction" not in summary


def test_write_report_on_digits(digits, tmp_path):
    images, labels = fake_synthetic(digits, 200, seed=1)
    planted = [3, 50, 700, 900, 1200]
    images = np.concatenate([images, digits.train_data[planted]])
    labels = np.concatenate([labels, digits.train_labels[planted]])
    summary = write_report(tmp_path, digits, images, labels, seed=4, steps=30, repeats=2)
    assert json.loads((tmp_path / "report.json").read_text()) == summary
    assert summary["task"] == "classification" and summary["utility_skipped"] is None
    assert summary["utility"]["seeds"] == [4, 5] and summary["utility"]["counts"]["synthetic"] == 205
    p = summary["privacy"]
    assert p["exact_copies"] == 5 and p["memorized"] >= 5 and p["synthetic_items"] == 205
    assert p["held_out_items"] == len(digits.test_data)
    for name in ("dcr.png", "closest-pairs.png"):
        with Image.open(tmp_path / name) as im:
            im.load()
            assert im.size[0] > 16
    assert summary["files"] == {"report": "report.json", "dcr": "dcr.png", "closest_pairs": "closest-pairs.png"}
    md = report_markdown(summary)
    real = summary["utility"]["arms"]["real"]
    trained = summary["utility"]["counts"]["real_train"]  # the real training images less the validation ones
    assert f"| real | {trained} | {real['accuracy_mean']:.4f} ± {real['accuracy_std']:.4f} |" in md
    assert f"scores {real['accuracy_mean']:.4f} accuracy trained on the real images alone" in md
    assert f"paired t-test p = {summary['utility']['gain_p_value']:.3g}" in md
    assert f"{p['fraction_below_held_out_p5']:.4f}" in md and f"**{p['exact_copies']}** of 205" in md
    assert f"{p['held_out_dcr']['p5']:.4f}" in md and "(dcr.png)" in md and "(closest-pairs.png)" in md
    assert f"| {summary['utility']['size_curve'][0]['synthetic_images']} | 0.125 |" in md


def test_unlabelled_synthetic_data_skips_utility_but_keeps_privacy(digits, tmp_path):
    images, _ = fake_synthetic(digits, 50)
    summary = write_report(tmp_path, digits, images, None)
    assert summary["utility"] is None and "no labels" in summary["utility_skipped"]
    assert summary["privacy"]["synthetic_items"] == 50
    md = report_markdown(summary)
    assert "Skipped: the synthetic data has no labels" in md and "dcr.png" in md


def test_write_report_refuses_bad_synthetic_images(digits, tmp_path):
    with pytest.raises(UserError, match="uint8"):
        write_report(tmp_path, digits, np.zeros((4, 8, 8, 1), np.float32), None)
    with pytest.raises(UserError, match=r"uint8 \(9, 9, 1\) but the data of .* is uint8 \(8, 8, 1\)"):
        write_report(tmp_path, digits, np.zeros((4, 9, 9, 1), np.uint8), None)


def test_segmentation_report_scores_miou_and_privacy_on_the_image_part(digits, tmp_path):
    def joint(images):
        return segmentation.join(images, (images[..., 0] > 64).astype(np.uint8), 2)  # digit against background

    train, test = joint(digits.train_data[:300]), joint(digits.test_data[:100])
    manifest = {"kind": "segmentation", "shape": [8, 8, 1], "num_classes": None, "class_names": None,
                "mask_classes": ["background", "digit"]}
    real = PreparedDataset(tmp_path / "data", manifest, train, None, test, None)
    assert real.sample_shape == (8, 8, 3) and real.modality.image_channels == 1
    synth_joint = joint(fake_synthetic(digits, 60)[0])
    synth_images, synth_masks = segmentation.split(synth_joint, 1)
    summary = write_report(tmp_path, real, segmentation.join(synth_images, synth_masks, 2), None, steps=10, repeats=1)
    assert summary["task"] == "segmentation" and summary["real"]["mask_classes"] == ["background", "digit"]
    assert set(summary["utility"]["arms"]) == {"real", "synthetic", "real+synthetic"}
    assert summary["utility"]["arms"]["real"]["miou_mean"] > (test[..., 1] > 0).mean() / 2  # all-background's mIoU
    assert summary["privacy"]["held_out_items"] == 100
    md = report_markdown(summary)
    assert "mIoU" in md and f"{summary['utility']['arms']['real']['miou_mean']:.4f}" in md
    # Without masks there is nothing to train a segmenter on: synthetic data of a segmentation dataset is the joint
    # (H, W, C + K) pairs, so images alone are refused before anything runs.
    with pytest.raises(UserError, match=r"\(8, 8, 1\) but the data of .* is uint8 \(8, 8, 3\)"):
        write_report(tmp_path / "b", real, synth_images, None)
    assert not (tmp_path / "b" / "report.json").exists()
