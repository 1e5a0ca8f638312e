"""The PyTorch-runtime rows of the export report: TorchScript and torch.ao int8 on a trained
tiny net, held-out digits, each file loaded back and checked against its eager form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from tests.tinycnn import small_cnn
from training.export import torch_native
from training.export.onnx import PARITY_ATOL


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, np.ndarray, np.ndarray, np.ndarray]:
    """small_cnn fitted on 1,200 digits (8x8, 3 channels) for 100 full-batch steps; returns it,
    the calibration images and the 597 held-out digits with labels."""
    digits = load_digits()
    images = np.repeat((digits.images / 8.0 - 1.0)[:, None], 3, axis=1).astype(np.float32)
    net = small_cnn(8).train()
    torch.set_num_threads(1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    x, y = torch.from_numpy(images[:1200]), torch.from_numpy(digits.target[:1200])
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval(), images[:256], images[1200:], digits.target[1200:]


def accuracy(runner: torch_native.TorchRunner, inputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(runner.run({"input": inputs})[0].argmax(1) == labels))


def test_torchscript_reloads_with_parity_and_every_int8_row_runs_quantized_kernels(
    trained: tuple[torch.nn.Module, np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    net, calibration, inputs, labels = trained
    rows = {}
    for name in torch_native.ROWS:
        path = tmp_path / f"{name}.pt"
        runner, diff, agreement = torch_native.build(
            name, net, calibration, inputs, path, 1, lambda _: None
        )
        assert torch_native.parity_gate(name, diff, agreement) == "", name
        if name == "torchscript":  # the file is its eager twin, to float noise
            assert diff <= PARITY_ATOL and agreement == 1.0
        rows[name] = runner
    fp32 = accuracy(rows["torchscript"], inputs, labels)
    assert fp32 > 0.85  # the majority class is ~10% of the held-out digits
    with torch.no_grad():
        eager = net(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(rows["torchscript"].run({"input": inputs})[0], eager, atol=1e-4)
    graphs = {name: str(runner.module.inlined_graph) for name, runner in rows.items()}
    assert "quantized::conv2d" in graphs["torch-int8-static"]
    assert "quantized::linear_dynamic" in graphs["torch-int8-dynamic"]
    assert "quantized::" not in graphs["torchscript"]
    for name in ("torch-int8-static", "torch-int8-dynamic"):
        assert accuracy(rows[name], inputs, labels) >= fp32 - 0.03, name


def test_parity_gate_names_the_gap_and_runner_restores_torch_threads(
    trained: tuple[torch.nn.Module, np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    assert "max abs logit diff 1.00e-02" in torch_native.parity_gate("torchscript", 1e-2, 1.0)
    assert "top-1 agreement 99.00%" in torch_native.parity_gate("torchscript", 0.0, 0.99)
    assert torch_native.parity_gate("torch-int8-static", 0.05, 0.995) == ""
    assert "agreement with eager int8 98.00%" in torch_native.parity_gate(
        "torch-int8-dynamic", 0.05, 0.98
    )
    net, calibration, inputs, _ = trained
    runner, _, _ = torch_native.build(
        "torchscript", net, calibration, inputs, tmp_path / "ts.pt", 2, lambda _: None
    )
    torch.set_num_threads(1)
    runner.run({"input": inputs[:4]})
    assert torch.get_num_threads() == 1 and runner.threads == 2
    with pytest.raises(ValueError, match="unknown PyTorch row 'int4'"):
        torch_native.build("int4", net, calibration, inputs, tmp_path / "x.pt", 1, print)


def test_bench_runtimes_times_all_five_runtimes_on_the_classify_net(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from training.export import bench_runtimes

    args = ["--size", "16", "--latency-runs", "4", "--throughput-runs", "4"]
    assert bench_runtimes.main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == ["onnxruntime fp32", "onnxruntime int8-static", *torch_native.ROWS]
    for row in rows[1:]:
        p50, ips = (float(cell) for cell in row.split("|")[2:4])
        assert p50 > 0 and ips > 0, row
