"""The digits data: a fixed stratified split, class subsets, serving's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from shared.media import ImageSpec, gray_to_image, image_to_array
from training.data import (
    digits_uint8,
    image_spec,
    load_splits,
    load_test_set,
    preprocess,
    split_hash,
    split_indices,
    stratified_subset,
    train_augmentation,
)

# Registered models record this hash; the export stage rebuilds their test set from it. If it
# changes, every registered model's held-out evaluation silently changes with it.
ALL_DIGITS_SPLIT_SHA256 = "a56d55139bac"


def test_digits_are_sklearns_real_images_scaled_to_uint8() -> None:
    images, labels = digits_uint8()
    raw = load_digits()
    assert images.shape == (1797, 8, 8)
    assert images.dtype == np.uint8
    assert images.max() == 255
    np.testing.assert_array_equal(images, np.round(raw.images * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(labels, raw.target)


def test_split_is_disjoint_and_covers_every_image_once() -> None:
    splits = split_indices()
    everything = np.concatenate([splits["train"], splits["val"], splits["test"]])
    assert len(everything) == 1797
    assert len(np.unique(everything)) == 1797


def test_split_is_stratified_70_15_15() -> None:
    _, labels = digits_uint8()
    overall = np.bincount(labels, minlength=10) / len(labels)
    for name, fraction in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        idx = split_indices()[name]
        assert len(idx) / len(labels) == pytest.approx(fraction, abs=0.005)
        share = np.bincount(labels[idx], minlength=10) / len(idx)
        assert np.abs(share - overall).max() < 0.01, name


def test_split_hash_is_pinned_and_repeatable() -> None:
    first, second = split_hash(load_splits()), split_hash(load_splits())
    assert first == second
    assert len(first) == 64
    assert first.startswith(ALL_DIGITS_SPLIT_SHA256)


def test_class_subset_has_its_own_hash_and_a_subset_of_each_split() -> None:
    everything, subset = load_splits(), load_splits([0, 1, 2, 3, 4])
    assert split_hash(subset) != split_hash(everything)
    for name in ("train", "val", "test"):
        assert set(subset[name].indices) < set(everything[name].indices)


def test_class_subset_is_reindexed_and_keeps_digit_names() -> None:
    _, digits = digits_uint8()
    splits = load_splits([7, 3, 5])
    for split in splits.values():
        assert split.label_names == ["3", "5", "7"]
        assert set(np.unique(split.labels)) == {0, 1, 2}
        names = np.array([int(n) for n in split.label_names])
        np.testing.assert_array_equal(names[split.labels], digits[split.indices])


@pytest.mark.parametrize("classes", [[1, 1, 2], [3, 10], [4], []])
def test_bad_class_subsets_are_rejected(classes: list[int]) -> None:
    with pytest.raises(ValueError, match="class"):
        load_splits(classes)


def test_examples_are_built_by_the_serving_preprocessing() -> None:
    spec = ImageSpec(24, 20, 3, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    held = load_test_set(spec, [2, 8])
    assert held.inputs.shape == (len(held.labels), 3, 24, 20)
    assert held.inputs.dtype == np.float32
    for i in (0, len(held.labels) // 2, len(held.labels) - 1):
        expected = image_to_array(gray_to_image(held.images[i]), spec)
        np.testing.assert_array_equal(held.inputs[i], expected)


def test_held_out_set_matches_the_test_split() -> None:
    spec = image_spec(16)
    held = load_test_set(spec, [0, 1, 2, 3, 4])
    test = load_splits([0, 1, 2, 3, 4])["test"]
    np.testing.assert_array_equal(held.images, test.images)
    np.testing.assert_array_equal(held.labels, test.labels)
    assert held.label_names == ["0", "1", "2", "3", "4"]
    assert held.split_hash == split_hash(load_splits([0, 1, 2, 3, 4]))
    assert held.images.dtype == np.uint8 and held.images.shape[1:] == (8, 8)


def test_stratified_subset_keeps_every_class_and_only_split_images() -> None:
    train = load_splits()["train"]
    small = stratified_subset(train, 100)
    assert len(small.labels) == 100
    assert set(np.unique(small.labels)) == set(range(10))
    assert set(small.indices) <= set(train.indices)
    assert stratified_subset(train, None) is train


def test_augmentation_jitters_slightly_and_fills_with_background() -> None:
    spec = image_spec(32)
    clean = torch.from_numpy(preprocess(digits_uint8()[0][:1], spec)[0])
    augment = train_augmentation(spec)
    torch.manual_seed(0)
    jittered = [augment(clean) for _ in range(8)]
    assert any(not torch.equal(x, clean) for x in jittered)
    for x in jittered:
        assert x.shape == clean.shape
        assert x.min() >= -1.0 - 1e-5 and x.max() <= 1.0 + 1e-5
        # the border is background (-1 after normalization), never zero-padding (0 = mid gray)
        assert torch.allclose(x[:, 0, 0], torch.full((3,), -1.0))
        # small jitter: still mostly the same digit (a flip or big shift would decorrelate it)
        corr = torch.corrcoef(torch.stack([x.flatten(), clean.flatten()]))[0, 1]
        assert corr > 0.5
