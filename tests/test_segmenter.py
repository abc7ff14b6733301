"""The segmenter and its IoU: hand-worked confusion matrices, learning a real task, the utility of synthetic pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftrain.errors import UserError
from difftrain.modalities.segmenter import confusion_matrix, fit_segmenter, iou, predict_masks, segmentation_utility


@pytest.fixture(scope="module")
def digit_pairs():
    """sklearn digits as (N, 8, 8, 1) uint8 images; each ink pixel (> 8 of 16) is labelled digit + 1, the rest 0."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * 255 / 16).astype(np.uint8)[..., None]
    masks = np.where(d.images > 8, d.target[:, None, None] + 1, 0).astype(np.uint8)
    return images, masks


def test_iou_is_one_when_perfect_and_zero_when_disjoint():
    true = np.array([[[0, 1], [2, 2]]], np.uint8)
    perfect = iou(true, true, 3)
    assert perfect["per_class"] == [1.0, 1.0, 1.0] and perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0
    # Truth all class 1, prediction all class 2: both score 0; class 0 is in neither and is left out.
    disjoint = iou(np.full((2, 3, 3), 2), np.full((2, 3, 3), 1), 3)
    assert disjoint["per_class"] == [None, 0.0, 0.0] and disjoint["miou"] == 0.0 and disjoint["pixel_accuracy"] == 0.0


def test_iou_of_a_partial_prediction_worked_by_hand():
    true = np.array([[[0, 0, 1, 1], [0, 0, 1, 2]]])
    pred = np.array([[[0, 1, 1, 1], [0, 0, 0, 2]]])
    # Rows true, columns predicted: one 0 read as 1, one 1 read as 0.
    assert confusion_matrix(pred, true, 4).tolist() == [[3, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    result = iou(pred, true, 4)
    # Class 0: TP 3, FP 1, FN 1 -> 3/5; class 1: 2/(2+1+1); class 2: 1/1; class 3 absent from both: ignored.
    assert result["per_class"] == [pytest.approx(3 / 5), pytest.approx(2 / 4), 1.0, None]
    assert result["miou"] == pytest.approx((3 / 5 + 2 / 4 + 1) / 3)
    assert result["pixel_accuracy"] == pytest.approx(6 / 8)


def test_a_class_missed_entirely_counts_as_zero():
    # Class 2 is in the truth but never predicted: IoU 0, and it pulls the mean down.
    true, pred = np.array([[[0, 2]]]), np.array([[[0, 0]]])
    result = iou(pred, true, 3)
    assert result["per_class"] == [pytest.approx(1 / 2), None, 0.0] and result["miou"] == pytest.approx(1 / 4)


def test_bad_masks_are_user_errors():
    with pytest.raises(UserError, match="outside 0..2"):
        iou(np.array([[[3]]]), np.array([[[0]]]), 3)
    with pytest.raises(UserError, match="differ in size"):
        iou(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)), 3)
    images = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(UserError, match="must be \\(N, H, W\\)"):
        fit_segmenter(images, np.zeros((4, 8, 7), np.uint8), 3, validation=(images, np.zeros((4, 8, 8), np.uint8)), max_steps=1)
    with pytest.raises(UserError, match="mask value 5 is not a class index 0..2"):
        fit_segmenter(images, np.full((4, 8, 8), 5, np.uint8), 3, validation=(images, np.zeros((4, 8, 8), np.uint8)), max_steps=1)


def test_segmenter_learns_digit_masks_on_held_out_images(digit_pairs):
    images, masks = digit_pairs
    model, converged = fit_segmenter(images[:1300], masks[:1300], 11, validation=(images[1300:1400], masks[1300:1400]),
                                     max_steps=200, seed=0)
    assert converged.best_step <= converged.steps <= 200 and [s for s, _ in converged.history][:2] == [50, 100]
    pred = predict_masks(model, images[1400:])
    assert pred.dtype == np.uint8 and pred.shape == masks[1400:].shape
    result = iou(pred, masks[1400:], 11)
    # A pixel's class is its digit's: the segmenter must read the whole digit, not just find ink (~0.1 mIoU).
    assert result["miou"] > 0.75 and result["pixel_accuracy"] > 0.9


def test_fitting_is_deterministic_and_leaves_the_global_rng_alone(digit_pairs):
    images, masks = digit_pairs[0][:200], digit_pairs[1][:200]

    def weights(seed: int) -> list[torch.Tensor]:
        model, _ = fit_segmenter(images, masks, 11, validation=(images[:20], masks[:20]), max_steps=5, seed=seed, batch=16)
        return [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = weights(0)
    assert torch.equal(torch.rand(3), expected)
    b, c = weights(0), weights(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_augmented_masks_move_with_their_images():
    from difftrain.modalities.segmenter import augment_pairs

    x = torch.full((4, 1, 14, 14), -1.0)
    x[:, :, 4:10, 4:10] = 1.0  # a white square on black
    y = torch.zeros(4, 14, 14, dtype=torch.long)
    y[:, 4:10, 4:10] = 3  # labelled class 3 on background
    images, masks = augment_pairs(x, y, torch.Generator().manual_seed(0))
    assert set(masks.unique().tolist()) <= {0, 3} and masks.dtype == torch.long  # classes stay classes
    # Where the moved mask says 3 the moved image is bright, and where it says background, dark.
    assert images[:, 0][masks == 3].mean() > 0.5 and images[:, 0][masks == 0].mean() < -0.5
    assert not torch.equal(masks[0], masks[1])  # each pair moves its own way


def test_segmentation_utility_scores_every_arm_with_the_same_recipe(digit_pairs):
    images, masks = digit_pairs
    real_train, real_test = (images[:600], masks[:600]), (images[1400:], masks[1400:])
    # "Synthetic" pairs whose masks are all background: a segmenter trained only on them cannot find digits.
    blank = (images[600:900], np.zeros_like(masks[600:900]))
    calls = []
    result = segmentation_utility(real_train, real_test, blank, 11, seeds=(0, 1), steps=80,
                                  class_names=["background", *map(str, range(10))], progress=lambda a, s: calls.append((a, s)))
    assert calls == [(arm, s) for arm in ("real", "synthetic", "real+synthetic") for s in (0, 1)]
    assert result["steps"] == 80 and "stopping early on the same 60 real validation pairs" in result["fairness"]
    assert result["counts"] == {"real_train": 540, "real_validation": 60, "synthetic": 300, "real_test": len(real_test[0])}
    assert result["judge_real_score"] == result["arms"]["real"]["miou_mean"]
    for arm in result["arms"].values():
        assert len(arm["miou_per_seed"]) == 2 and arm["miou_std"] >= 0
        assert list(arm["per_class_iou"]) == result["class_names"]
    real, synthetic = result["arms"]["real"], result["arms"]["synthetic"]
    # All-background predictions: background's IoU is its share of the pixels, every digit class 0.
    background = float((real_test[1] == 0).mean())
    assert synthetic["miou_mean"] == pytest.approx(background / 11, abs=0.02)
    assert real["miou_mean"] > synthetic["miou_mean"] + 0.3
    assert result["synthetic_minus_real_miou"] == pytest.approx(synthetic["miou_mean"] - real["miou_mean"])
    assert isinstance(result["synthetic_helps"], bool)


def test_segmentation_utility_refuses_pairs_of_another_size(digit_pairs):
    images, masks = digit_pairs
    other = (np.zeros((10, 16, 16, 1), np.uint8), np.zeros((10, 16, 16), np.uint8))
    with pytest.raises(UserError, match="synthetic pairs are"):
        segmentation_utility((images[:50], masks[:50]), (images[50:60], masks[50:60]), other, 11, steps=1)
