"""The confidence filter's classifier of images (modalities/image_confidence.py): the ResNet judge on every labelled
training image, with probabilities a threshold can be read against, cached beside the dataset."""

from __future__ import annotations

import numpy as np
import pytest

from difftrain.data import load_dataset
from difftrain.modalities import image_confidence


def test_the_confidence_judge_knows_the_classes_reads_sharp_probabilities_and_is_cached(digits_dir, monkeypatch,
                                                                                        capsys):
    ds = load_dataset(digits_dir)
    classifier, meta = ds.modality.confidence_classifier(ds, epochs=10)
    # Its progress counts steps until early stopping, not towards the step cap it stops long before (no share of
    # the cap done, no time left guessed from it).
    said = [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("the confidence filter's classifier: ")]
    assert said and all("until the validation score stalls" in line for line in said)
    assert not any("%" in line or " left" in line for line in said)
    assert f"{meta['steps']:,}, until the validation score stalls (at most 3,000)" in said[-1]
    assert meta["name"].startswith("difftrain-resnet-judge") and meta["test_accuracy"] > 0.95
    # Every labelled training image is used (a tenth to stop on), not the feature classifier's half.
    assert meta["training_items"] + meta["validation_items"] == len(ds.train_data)
    assert meta["validation_items"] == sum(round(0.1 * np.count_nonzero(ds.train_labels == c)) for c in range(10))
    p = classifier.probabilities(ds.test_data)
    assert p.shape == (len(ds.test_data), 10) and np.allclose(p.sum(1), 1)
    own = p[np.arange(len(p)), ds.test_labels]
    # Without label smoothing a right answer is not held near 0.91 (smoothing's target for ten classes): most test
    # digits clear 0.95, so the filter's threshold of 0.9 separates right from doubtful, not right from right.
    assert np.mean(own >= 0.95) > 0.8
    files = sorted(p.name for p in (digits_dir / "classifier").glob("confidence-judge-*"))
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    # A second use loads the cached weights: training again would fail here.
    monkeypatch.setattr(image_confidence, "fit_judge", lambda *a, **k: pytest.fail("the cached judge was trained again"))
    again_classifier, again = ds.modality.confidence_classifier(ds, epochs=10)
    assert again == meta
    assert np.array_equal(again_classifier.probabilities(ds.test_data[:50]), p[:50])

