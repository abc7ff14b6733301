"""KID, k-NN manifold metrics and memorization against hand-computed answers on tiny sets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from difftrain.evaluation.kid import kernel_distance, mmd2_unbiased
from difftrain.evaluation.memorization import memorization, nearest_training, save_closest_pairs
from difftrain.evaluation.neighbours import manifold_metrics
from difftrain.modalities import modality_for

IMAGES_8x8 = modality_for({"kind": "image", "shape": [8, 8, 1]})
PIXEL = modality_for({"kind": "image", "shape": [1, 1, 1]})


def test_mmd2_unbiased_by_hand_1d():
    # d = 1, k(x, y) = (xy + 1)^3. a = {0, 1}: k(0, 1) = 1 -> within-a mean 1. b = {0, 2}: k(0, 2) = 1 -> 1.
    # Cross: k(0,0) = k(0,2) = k(1,0) = 1, k(1,2) = 27 -> mean 30/4. MMD^2 = 1 + 1 - 2 * 7.5 = -13.
    assert mmd2_unbiased(np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])) == pytest.approx(-13.0)


def test_mmd2_unbiased_by_hand_2d_unequal_sizes():
    # d = 2, k(x, y) = (x.y / 2 + 1)^3.
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    within_a = 2 * 1.0 / (2 * 1)  # a1.a2 = 0 -> 1
    within_b = 2 * (1.0 + 8.0 + 1.0) / (3 * 2)  # b1.b2 = 0 -> 1, b1.b3 = 2 -> 8, b2.b3 = 0 -> 1
    cross = (1.5**3 + 1 + 8 + 1.5**3 + 1 + 1) / 6  # a1.b = (1, 0, 2), a2.b = (1, 0, 0)
    expected = within_a + within_b - 2 * cross
    assert expected == pytest.approx(-19 / 12)
    assert mmd2_unbiased(a, b) == pytest.approx(expected)


def test_kid_near_zero_for_same_gaussian_and_positive_for_shifted():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same, same_std = kernel_distance(x, y, subsets=20, subset_size=500)
    shifted, _ = kernel_distance(x, y + 0.5, subsets=20, subset_size=500)
    assert abs(same) < 0.02 and same_std > 0
    assert shifted > 0.5


def test_kid_single_full_subset_is_mmd2_and_seeded():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 1.0
    # subset_size is clipped to 30: each subset is a permutation of a whole set, and MMD^2 ignores order.
    mean, std = kernel_distance(x[:30], y, subsets=1, subset_size=1000)
    assert mean == pytest.approx(mmd2_unbiased(x[:30], y)) and std == 0.0
    assert kernel_distance(x, y, subsets=5, seed=3) == kernel_distance(x, y, subsets=5, seed=3)
    assert kernel_distance(x, y, subsets=5, seed=3) != kernel_distance(x, y, subsets=5, seed=4)


def test_kid_matches_torchmetrics():
    kid = pytest.importorskip("torchmetrics.image.kid")
    import torch

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 8)) * 1.5
    reference = kid.poly_mmd(torch.from_numpy(x), torch.from_numpy(y), degree=3, gamma=None, coef=1.0)
    assert mmd2_unbiased(x, y) == pytest.approx(float(reference), rel=1e-10)


REAL = np.array([[0.0], [1.0], [2.0], [3.0]])
FAKE = np.array([[0.5], [1.6], [7.0], [10.0]])


def test_manifold_metrics_by_hand_k1():
    # Real radii (k=1): all 1. Fake radii: 0.5 -> 1.1, 1.6 -> 1.1, 7 -> 3, 10 -> 3.
    # precision: 0.5 (to 0) and 1.6 (to 2) inside; 7 and 10 are 4 and 7 from real 3 -> 2/4.
    # recall: 0, 1 within 1.1 of fake 0.5; 2 within 1.1 of 1.6; 3 is 1.4 from 1.6, 4 from 7 (radius 3) -> 3/4.
    # density: fake 0.5 in the balls of 0 and 1, fake 1.6 in those of 1 and 2 -> 4 / (k=1 * 4 fakes) = 1.
    # coverage: nearest fakes of 0, 1, 2, 3 at 0.5, 0.5, 0.4, 1.4 against radius 1 -> 3/4.
    m = manifold_metrics(REAL, FAKE, k=1)
    assert m == pytest.approx({"precision": 0.5, "recall": 0.75, "density": 1.0, "coverage": 0.75, "k": 1})


def test_manifold_metrics_by_hand_k2():
    # Real radii (k=2): 0 -> 2, 1 -> 1, 2 -> 1, 3 -> 2. Fake radii: 0.5 -> 6.5, 1.6 -> 5.4, 7 -> 5.4, 10 -> 8.4.
    # precision: 0.5 and 1.6 inside; 7 is 4 from real 3 (radius 2) -> 2/4.
    # recall: every real point is within 6.5 of fake 0.5 -> 1.
    # density: fake 0.5 in balls of 0 (0.5 < 2), 1 (0.5 < 1); fake 1.6 in balls of 0 (1.6 < 2), 1, 2 and
    # 3 (1.4 < 2) -> 6 / (2 * 4) = 0.75.
    # coverage: nearest fakes at 0.5, 0.5, 0.4, 1.4 against radii 2, 1, 1, 2 -> 1.
    m = manifold_metrics(REAL, FAKE, k=2)
    assert m == pytest.approx({"precision": 0.5, "recall": 1.0, "density": 0.75, "coverage": 1.0, "k": 2})


def test_manifold_metrics_boundary_conventions():
    # Real {0, 1}: radii 1. Fake {2, 5}: radii 3. Fake 2 lies exactly on the ball of real 1:
    # inside for precision ("<="), outside for density and coverage ("<").
    m = manifold_metrics(np.array([[0.0], [1.0]]), np.array([[2.0], [5.0]]), k=1)
    assert m == pytest.approx({"precision": 0.5, "recall": 1.0, "density": 0.0, "coverage": 0.0, "k": 1})


def test_manifold_metrics_swap_symmetry_and_chunking():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(60, 2)), rng.normal(size=(45, 2)) * 1.3 + 0.4
    forward, backward = manifold_metrics(real, fake, k=3), manifold_metrics(fake, real, k=3)
    assert forward["precision"] == backward["recall"] and forward["recall"] == backward["precision"]
    assert 0 < forward["precision"] < 1 and 0 < forward["recall"] < 1
    assert manifold_metrics(real, fake, k=3, chunk=7) == forward


@pytest.fixture
def train_images() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, size=(20, 8, 8, 1), dtype=np.uint8)


def test_memorization_flags_copies_and_near_copies_not_noise(train_images):
    rng = np.random.default_rng(5)
    near = train_images[4].copy()
    near[3, 3, 0] = near[3, 3, 0] + 10 if near[3, 3, 0] < 200 else near[3, 3, 0] - 10
    noise = rng.integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    samples = np.concatenate([train_images[[2, 5, 7]], near[None], noise])
    result = memorization(samples, train_images, IMAGES_8x8)
    assert result.flagged.tolist() == [True] * 4 + [False] * 5
    assert result.nearest_index[:4].tolist() == [2, 5, 7, 4]
    assert result.d1[:3].tolist() == [0.0, 0.0, 0.0]
    assert result.d1[3] == pytest.approx(10 / 255)
    assert result.summary() == {"memorized_fraction": 4 / 9, "memorized": 4, "memorization_ratio": 1 / 3}


def test_memorization_ratio_and_duplicated_training_images():
    # One-pixel images: training values 0, 90, 255 (and 90 again). Sample 20: d1 = 20, d2 = 70 (x 1/255),
    # 20/70 < 1/3 -> memorized. Sample 25: 25/65 > 1/3 -> not. Sample 90 copies a duplicated image: d1 = d2 = 0.
    train = np.array([0, 90, 255, 90], dtype=np.uint8).reshape(4, 1, 1, 1)
    samples = np.array([20, 25, 90], dtype=np.uint8).reshape(3, 1, 1, 1)
    d1, d2, index = nearest_training(samples, train, PIXEL)
    assert d1 * 255 == pytest.approx([20, 25, 0]) and d2 * 255 == pytest.approx([70, 65, 0])
    assert index[:2].tolist() == [0, 0]
    assert memorization(samples, train, PIXEL).flagged.tolist() == [True, False, True]
    assert memorization(samples, train, PIXEL, ratio=0.5).flagged.tolist() == [True, True, True]


def test_save_closest_pairs_layout(train_images, tmp_path):
    near = train_images[4].copy()
    near[0, 0, 0] = near[0, 0, 0] + 10 if near[0, 0, 0] < 200 else near[0, 0, 0] - 10
    noise = np.random.default_rng(6).integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    samples = np.concatenate([noise[:1], train_images[[2, 5, 7]], noise[1:], near[None]])
    result = memorization(samples, train_images, IMAGES_8x8)
    path = save_closest_pairs(samples, train_images, result, tmp_path / "pairs.png", IMAGES_8x8, count=4)
    # Four 8x16 pairs on a 2x2 grid with 1-pixel padding: 19 x 35, enlarged x8 to reach 256 -> 152 x 280.
    img = np.asarray(Image.open(path))
    assert img.shape == (152, 280)
    grid = img[::8, ::8]
    # Copies of 2, 5, 7 come first (ratio 0), then the near copy: sample left, training image right.
    assert np.array_equal(grid[1:9, 1:9], train_images[2, ..., 0])
    assert np.array_equal(grid[10:18, 18:26], near[..., 0])
    assert np.array_equal(grid[10:18, 26:34], train_images[4, ..., 0])


def test_floors_hold_the_samples_classes_in_the_samples_counts(tmp_path):
    from difftrain.data.dataset import PreparedDataset
    from difftrain.evaluation.reference import floor_pool
    from difftrain.evaluation.suite import floor_subsets

    rng = np.random.default_rng(0)
    train_labels = rng.integers(0, 4, 400).astype(np.int64)
    manifest = {"kind": "points", "shape": [1], "num_classes": 4, "class_names": list("abcd"), "columns": ["x"],
                "mean": [0.0], "std": [1.0]}
    ds = PreparedDataset(tmp_path, manifest, rng.normal(size=(400, 1)).astype(np.float32), train_labels,
                         np.zeros((10, 1), np.float32), np.zeros(10, np.int64))
    pool = floor_pool(ds)
    samples = np.arange(60, dtype=np.int64) % 3  # balanced over classes 0-2, none of class 3
    subsets = floor_subsets(ds, pool, samples, 60, seed=0)
    assert len(subsets) == 5 and len({tuple(s) for s in subsets}) == 5  # five different real subsets
    for s in subsets:
        assert len(set(s)) == 60 and np.bincount(train_labels[pool[s]], minlength=4).tolist() == [20, 20, 20, 0]
    # Without labels (or with a class too rare in the pool): plain random subsets of the same size.
    assert all(len(set(s)) == 60 for s in floor_subsets(ds, pool, None, 60, seed=0))
    counts = [np.bincount(train_labels[pool[s]], minlength=4)[3] for s in floor_subsets(ds, pool, np.full(60, 3), 60, seed=0)]
    assert counts != [60] * 5  # the pool holds fewer than 60 of class 3: the subsets are random
