"""The digits data: a fixed stratified split, class subsets, serving's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from shared.media import ImageSpec, gray_to_image, image_to_array
from training.data import (
    AUGMENTATIONS,
    CurriculumSampler,
    competence,
    difficulty,
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


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_auto_augment_policies_change_digits_within_the_pixel_range(policy: str) -> None:
    spec = image_spec(16)
    clean = torch.from_numpy(preprocess(digits_uint8()[0][:1], spec)[0])
    augment = train_augmentation(spec, policy)
    torch.manual_seed(0)
    augmented = [augment(clean) for _ in range(12)]
    assert sum(not torch.equal(x, clean) for x in augmented) >= 6
    for x in augmented:
        assert x.shape == clean.shape and x.dtype == torch.float32
        assert x.min() >= -1.0 - 1e-5 and x.max() <= 1.0 + 1e-5
        # values stay on the 0..255 grid serving's preprocessing produces
        pixels = (x + 1) / 2 * 255
        assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    torch.manual_seed(0)
    assert all(torch.equal(augment(clean), x) for x in augmented)  # the seed decides


def test_no_augmentation_is_none_and_unknown_policies_are_refused() -> None:
    assert "none" in AUGMENTATIONS and train_augmentation(image_spec(16), "none") is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        train_augmentation(image_spec(16), "mixup")


def test_difficulty_ranks_what_a_different_model_gets_wrong_as_harder() -> None:
    """The score is out-of-fold: digits a k-NN on other pixels misreads score harder."""
    from sklearn.model_selection import cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    train = load_splits()["train"]
    scores = difficulty(train.images, train.labels)
    assert scores.shape == (len(train.labels),) and np.all(scores >= 0)
    assert np.array_equal(scores, difficulty(train.images, train.labels))
    pixels = train.images.reshape(len(train.labels), -1)
    knn_wrong = cross_val_predict(KNeighborsClassifier(3), pixels, train.labels) != train.labels
    assert knn_wrong.any()
    # mistakes of an unrelated model sit far up the ranking: median > 3x the typical digit's
    assert np.median(scores[knn_wrong]) > 3 * np.median(scores[~knn_wrong])


def test_competence_grows_linearly_to_everything_at_half_time() -> None:
    fractions = [competence(epoch, 10, 0.2) for epoch in range(10)]
    assert fractions[0] == 0.2 and fractions[5:] == [1.0] * 5
    assert fractions == sorted(fractions)


def test_curriculum_sampler_draws_a_full_epoch_from_the_easiest_pool() -> None:
    scores = np.random.default_rng(0).random(100)
    easiest = np.argsort(scores)
    sampler = CurriculumSampler(scores, epochs=4, start=0.25, seed=3)
    seen = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 100
        assert set(drawn) == set(easiest[: sampler.pool_size()].tolist())
        seen.append(drawn)
    assert [len(set(d)) for d in seen] == [25, 63, 100, 100]  # 0.25, 0.625, 1, 1
    assert seen[2] != seen[3]  # a fresh order every epoch
    again = CurriculumSampler(scores, epochs=4, start=0.25, seed=3)
    again.set_epoch(1)
    assert list(again) == seen[1]
    with pytest.raises(ValueError, match="start fraction"):
        CurriculumSampler(scores, epochs=4, start=0.0, seed=0)
