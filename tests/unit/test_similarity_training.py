"""The Siamese encoder, its bundle, the metric-learning objective and the evaluation metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models import similarity as arch
from services.similarity.gallery import Gallery, GalleryEmptyError
from shared.bundle import open_bundle
from training import similarity as job
from training import similarity_eval as ev
from training.data import image_spec
from training.export import similarity as exporter


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_best_threshold_separates_separable_scores() -> None:
    same = np.array([True, True, False, False, True])
    scores = np.array([0.9, 0.8, 0.1, 0.3, 0.7])
    threshold, accuracy = ev.best_threshold(same, scores)
    assert accuracy == 1.0 and 0.3 < threshold < 0.7
    assert ev.equal_error_rate(same, scores)[0] == 0.0


def test_best_threshold_maximizes_accuracy_when_scores_overlap() -> None:
    same = np.array([True, False, True, False, True, False])
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.2])
    threshold, accuracy = ev.best_threshold(same, scores)
    # accepting the top 1 gets 4/6 right; the top 3 also 4/6; the top 5: 4/6; none: 3/6
    predicted = scores >= threshold
    assert accuracy == pytest.approx(4 / 6)
    assert np.mean(predicted == same) == pytest.approx(accuracy)


def test_retrieval_recall_and_map_by_hand() -> None:
    gallery = np.eye(3, dtype=np.float32)
    gallery_labels = np.array([0, 1, 0])
    # query 0 is nearest item 1 (label 1), then item 0 (label 0): miss at 1, hit at 2
    queries = np.array([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    metrics = ev.retrieval(queries, np.array([0, 1]), gallery, gallery_labels, ks=(1, 2))
    assert metrics["recall_at_1"] == 0.5 and metrics["recall_at_2"] == 1.0
    # AP query 0: hits at ranks 2 and 3 → (1/2 + 2/3) / 2; query 1: hit at rank 1 → 1
    assert metrics["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)


def test_balanced_pairs_hold_every_positive_and_as_many_negatives() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pairs, same = ev.balanced_pairs(labels)
    assert same.sum() == 3 + 1 + 6 and (~same).sum() == same.sum()
    assert np.array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], same)
    again, _ = ev.balanced_pairs(labels)
    assert np.array_equal(pairs, again)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_encoder_outputs_unit_embeddings_of_the_configured_size(name: str) -> None:
    channels = 3 if name == "resnet18" else 1
    architecture = arch.architecture_config(name, 24, in_channels=channels)
    model = arch.build_encoder(architecture).eval()
    with torch.no_grad():
        out = model(torch.randn(5, channels, 16, 16))
    assert out.shape == (5, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    assert arch.input_channels(architecture) == channels


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="no setting"):
        arch.architecture_config("cnn", 64, depth=3)
    with pytest.raises(ValueError, match="unknown encoder"):
        arch.architecture_config("vit", 64)


def test_torch_bundle_round_trip_reproduces_the_embeddings(tmp_path: Path) -> None:
    architecture = arch.architecture_config("cnn", 8, widths=[4, 8])
    model = arch.build_encoder(architecture).eval()
    spec = image_spec(16, 1)
    arch.write_torch_bundle(
        tmp_path,
        model,
        name="similarity-torch",
        architecture=architecture,
        spec=spec,
        labels=["0", "1"],
        threshold=0.42,
        training={"loss": "TripletMarginLoss"},
        source={"run_id": "test"},
        metrics={},
    )
    bundle = open_bundle(tmp_path)
    assert bundle.manifest["threshold"] == 0.42 and bundle.outputs[0].shape == [-1, 8]
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(arch.load_torch_bundle(bundle)(x), model(x))


@pytest.mark.parametrize("loss", job.LOSSES)
@pytest.mark.parametrize("miner", job.MINERS)
def test_every_objective_trains_with_pytorch_metric_learning(loss: str, miner: str) -> None:
    args = job.parse_args(["--quick", "--loss", loss, "--miner", miner])
    objective = job.build_objective(args)
    assert objective.described["library"] == "pytorch-metric-learning"
    torch.manual_seed(0)
    model = arch.build_encoder(arch.architecture_config("cnn", 8, widths=[4, 8]))
    x, y = torch.randn(16, 1, 8, 8), torch.arange(4).repeat(4)
    embeddings = model(x)
    tuples = objective.miner(embeddings, y) if objective.miner else None
    value = objective.loss(embeddings, y, tuples)
    value.backward()
    assert torch.isfinite(value)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_training_flags_check_the_batch_layout() -> None:
    args = job.parse_args(["--quick"])
    assert (args.epochs, args.image_size, args.channels, args.margin) == (10, 16, 1, 0.2)
    with pytest.raises(SystemExit):
        job.parse_args(["--batch-size", "30", "--m-per-class", "8"])
    assert job.parse_args(["--arch", "resnet18"]).channels == 3


def test_export_flags() -> None:
    assert exporter.parse_args([]).variants == ["fp32", "int8-static"]
    assert exporter.parse_args(["--variants", "int8-static"]).variants == ["fp32", "int8-static"]
    assert exporter.parse_args(["--variants", "fp32"]).variants == ["fp32"]
    with pytest.raises(SystemExit):
        exporter.parse_args(["--variants", "int4"])


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_gallery_index_finds_each_item_itself(index: str) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"item-{i}" for i in range(200)]
    gallery = Gallery(vectors, ids, [str(i % 10) for i in range(200)], index, hnsw_m=16)
    hits = [gallery.search(vectors[i], 3)[0]["id"] for i in range(0, 200, 7)]
    assert hits == ids[::7]
    assert Gallery(vectors[:0], [], [], index, 16).size == 0
    with pytest.raises(GalleryEmptyError):
        Gallery(vectors[:0], [], [], index, 16).search(vectors[0], 1)
