"""int8 quantization: the calibration reader, and QAT weights/ranges landing in the QDQ model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from tests.tinycnn import small_cnn
from training.export import quantize
from training.export.onnx import export_onnx, simplify


def test_calibration_reader_feeds_every_image_once_in_batches_and_rewinds() -> None:
    images = np.arange(10 * 3 * 2 * 2, dtype=np.float32).reshape(10, 3, 2, 2)
    reader = quantize.ImageCalibrationReader(images, batch_size=4)
    batches = list(iter(reader.get_next, None))
    assert [len(b["input"]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), images)
    reader.rewind()
    assert len(reader.get_next()["input"]) == 4
    with pytest.raises(ValueError, match="at least one image"):
        quantize.ImageCalibrationReader(images[:0])


def test_unknown_calibration_method_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="entropy"):
        quantize.quantize_int8_static(tmp_path / "a", tmp_path / "b", np.zeros((1, 1)), "best")


def initializers(path: Path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def test_qat_weights_and_input_ranges_survive_onnxruntime_quantization(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inputs = rng.normal(0, 1, size=(64, 3, 8, 8)).astype(np.float32)
    net = quantize.prepare_qat(small_cnn(8), float_stem=False)
    net.train()
    with torch.no_grad():
        for start in range(0, 64, 16):
            net(torch.from_numpy(inputs[start : start + 16]))
    net.eval()
    ranges = quantize.finish_qat(net)
    assert set(ranges) == {"0", "3", "7"}  # the BatchNorm was folded into conv 0
    weights = {
        name: m.weight.detach().numpy() for name, m in quantize.quantized_layers(net).items()
    }

    raw, clean, pre = (tmp_path / f"{n}.onnx" for n in ("raw", "clean", "pre"))
    export_onnx(net, torch.from_numpy(inputs[:2]), raw, 18, optimize=False)
    simplify(raw, clean)
    quantize.prepare_for_quantization(clean, pre)
    mapped = quantize.onnx_input_ranges(pre, ranges)
    assert mapped["input"] == ranges["0"]  # conv 0 reads the model input
    target = tmp_path / "int8.onnx"
    quantize.quantize_int8_static(pre, target, inputs, "minmax", mapped, float_stem=False)

    stored = initializers(target)
    for name, weight in weights.items():
        q = stored[f"{name}.weight_quantized"].astype(np.float32)
        scale = stored[f"{name}.weight_scale"].reshape(-1, *([1] * (weight.ndim - 1)))
        # the QAT weights are on onnxruntime's grid: quantizing them loses nothing
        np.testing.assert_allclose(q * scale, weight, rtol=0, atol=1e-6)
    low, high = ranges["0"]
    assert float(stored["input_scale"]) == pytest.approx((max(high, 0) - min(low, 0)) / 255)

    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(torch.from_numpy(inputs)).numpy()
    got = session.run(None, {"input": inputs})[0]
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.9


def test_the_stem_stays_float_by_default_in_qat_and_in_the_quantized_model(tmp_path: Path) -> None:
    net = quantize.prepare_qat(small_cnn(8))
    assert not hasattr(net.get_submodule("0"), "input_fake_quant")
    assert set(quantize.finish_qat(net)) == {"3", "7"}
    raw, clean, pre = (tmp_path / f"{n}.onnx" for n in ("raw", "clean", "pre"))
    export_onnx(small_cnn(8), torch.zeros(2, 3, 8, 8), raw, 18, optimize=False)
    simplify(raw, clean)
    quantize.prepare_for_quantization(clean, pre)
    assert len(quantize.stem_nodes(pre)) == 1
    target = tmp_path / "int8.onnx"
    inputs = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)
    quantize.quantize_int8_static(pre, target, inputs)
    stored = initializers(target)
    assert "3.weight_quantized" in stored
    graph = onnx.load(str(target)).graph
    stem = next(n for n in graph.node if n.name == quantize.stem_nodes(pre)[0])
    assert stem.op_type == "Conv" and stored[stem.input[1]].dtype == np.float32
