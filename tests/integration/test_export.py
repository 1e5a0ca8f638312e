"""The export stage end to end: a --quick model → every variant → gates → registry → serving."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from mlflow.tracking import MlflowClient

from models.classify import load_torch_bundle
from shared.bundle import Bundle, open_bundle
from shared.errors import BundleError
from shared.media import ImageSpec
from shared.onnx import OnnxModel
from shared.registry import RegistryClient
from tests.procs import (
    free_port,
    poll_until,
    readyz_saying,
    run_module,
    running,
    tail,
    wait_http,
)
from training.data import load_test_set

pytestmark = pytest.mark.integration

SOURCE, NAME = "exp-torch", "exp"
VARIANTS = {"fp32", "int8-dynamic", "int8-static", "int8-qat", "pruned", "pruned-int8"}


@dataclass(frozen=True)
class Exported:
    tracking_uri: str
    workdir: Path
    log: str
    bundle: Bundle

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def export_args(workdir: Path, *extra: str) -> list[str]:
    return [
        "classify",
        "--quick",
        "--source",
        f"models:/{SOURCE}@candidate",
        "--name",
        NAME,
        "--cache-dir",
        str(workdir / "export-cache"),
        "--checkpoint-dir",
        str(workdir / "checkpoints"),
        *extra,
    ]


@pytest.fixture(scope="module")
def exported(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A --quick classify model exported with the quick knobs (the gate widened: a two-epoch
    model's fine-tuned variants move by several points either way)."""
    workdir = tmp_path_factory.mktemp("export")
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    train = ["--quick", "--model-name", SOURCE]
    run_module("training.classify", *train, env=env, log=workdir / "train.log")
    args = export_args(workdir, "--max-accuracy-drop", "15")
    log = run_module("training.export", *args, env=env, log=workdir / "export.log")
    registry_client = RegistryClient(mlflow_server)
    bundle = registry_client.fetch(f"models:/{NAME}@production", workdir / "fetched").bundle
    return Exported(mlflow_server, workdir, log, bundle)


def test_every_variant_is_bundled_with_figures_and_passes_its_smoke_test_in_onnxruntime(
    exported: Exported,
) -> None:
    bundle = exported.bundle
    assert set(bundle.variants) == VARIANTS
    for name, variant in bundle.variants.items():
        assert len(variant["sha256"]) == 64 and variant["size_bytes"] > 0
        for key in ("accuracy", "macro_f1", "agreement_fp32", "params", "flops"):
            assert key in variant, (name, key)
        assert variant["latency_ms_p50"] > 0 and variant["throughput_ips"] > 0
        model = OnnxModel.from_bundle(bundle, name, intra_op_threads=1)
        assert model.smoke_test(bundle, name) <= 1e-3
    fastest = max(bundle.variants, key=lambda n: bundle.variants[n]["throughput_ips"])
    assert bundle.default_variant == fastest
    assert bundle.manifest["variants"]["fp32"]["opset"] == 18
    assert bundle.file("weights.safetensors").stat().st_size > 0
    assert bundle.file("tradeoffs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = bundle.file("report.md").read_text()
    for name in [*VARIANTS, "sparse-50"]:
        assert f"| `{name}` |" in report
    assert "| `sparse-50` | study |" in report and "sparse-50" not in bundle.variants
    for name in ("torchscript", "torch-int8-static", "torch-int8-dynamic"):
        assert f"| `{name}` | torch, report |" in report and name not in bundle.variants
        assert not list(bundle.path.glob("*.pt"))  # serving gets no TorchScript file


def test_export_run_logs_report_plot_and_per_variant_metrics(exported: Exported) -> None:
    client = exported.client()
    version = client.get_model_version_by_alias(NAME, "production")
    assert version.tags["default_variant"] == exported.bundle.default_variant
    run = client.get_run(version.run_id)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "tradeoffs.png", "bundle"} <= artifacts
    assert run.data.metrics["int8-static.in_bundle"] == 1.0
    assert run.data.metrics["parity_max_abs_diff"] <= 1e-4
    metrics = run.data.metrics
    assert metrics["torch-int8-static.in_bundle"] == 0.0
    # torch.ao's int8 answers as the fp32 net does on nearly every held-out digit
    assert metrics["torch-int8-static.agreement_fp32"] >= 0.95
    assert metrics["torchscript.agreement_fp32"] == 1.0
    # int8 explains the digits as fp32 does: its occlusion maps rank pixels alike
    assert metrics["int8-static.attribution_spearman"] >= 0.8
    for name, variant in exported.bundle.variants.items():
        assert (name == "fp32") != ("attribution_spearman" in variant), name


def held_out(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    spec = ImageSpec.from_manifest(bundle.preprocessing)
    test = load_test_set(spec, bundle.preprocessing.get("classes"))
    return test.inputs, test.labels


def logits(bundle: Bundle, variant: str, inputs: np.ndarray) -> np.ndarray:
    return OnnxModel.from_bundle(bundle, variant, 1).run({"input": inputs})[0]


def test_fp32_matches_the_pytorch_weights_it_ships(exported: Exported) -> None:
    bundle = exported.bundle
    inputs, _ = held_out(bundle)
    with torch.no_grad():
        reference = load_torch_bundle(bundle)(torch.from_numpy(inputs)).numpy()
    onnx_out = logits(bundle, "fp32", inputs)
    assert float(np.abs(onnx_out - reference).max()) <= 1e-4
    np.testing.assert_array_equal(onnx_out.argmax(1), reference.argmax(1))
    assert bundle.variants["fp32"]["max_abs_diff_torch"] <= 1e-4


def test_int8_agrees_with_fp32_on_the_held_out_digits(exported: Exported) -> None:
    bundle = exported.bundle
    inputs, _ = held_out(bundle)
    fp32 = logits(bundle, "fp32", inputs).argmax(1)
    for variant in ("int8-static", "int8-dynamic"):
        agreement = float(np.mean(logits(bundle, variant, inputs).argmax(1) == fp32))
        assert agreement >= 0.95, (variant, agreement)
    # static scales make each image's answer independent of its batch (dynamic's are per batch)
    static = bundle.variants["int8-static"]["agreement_fp32"]
    assert float(np.mean(logits(bundle, "int8-static", inputs).argmax(1) == fp32)) == static
    assert (
        bundle.variant_file("int8-static").stat().st_size
        < 0.3 * bundle.variant_file("fp32").stat().st_size
    )


def conv_channels(path: Path) -> list[int]:
    graph = onnx.load(str(path)).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    return [shapes[n.input[1]][0] for n in graph.node if n.op_type == "Conv"]


def test_pruned_model_has_half_the_channels_and_a_quarter_of_the_parameters(
    exported: Exported,
) -> None:
    bundle = exported.bundle
    full, pruned = bundle.variants["fp32"], bundle.variants["pruned"]
    assert pruned["params"] / full["params"] == pytest.approx(0.25, abs=0.01)
    assert pruned["prune_ratio"] == 0.5
    assert conv_channels(bundle.variant_file("pruned")) == [
        c // 2 for c in conv_channels(bundle.variant_file("fp32"))
    ]
    assert bundle.variants["pruned"]["max_abs_diff_torch"] <= 1e-4


def test_failing_gate_leaves_the_alias_and_exits_non_zero(exported: Exported) -> None:
    client = exported.client()
    before = client.get_model_version_by_alias(NAME, "production").version
    versions = len(client.search_model_versions(f"name='{NAME}'"))
    log = exported.workdir / "failing-export.log"
    args = export_args(exported.workdir, "--max-accuracy-drop", "-1")
    cmd = [sys.executable, "-m", "training.export", *args]
    with running(cmd, log, {"MLFLOW_TRACKING_URI": exported.tracking_uri}) as proc:
        code = proc.wait(timeout=300)
    output = log.read_text()
    assert code == 1, output[-3000:]
    assert "GATE FAILED: fp32: accuracy drop 0.00 points > --max-accuracy-drop -1" in output
    assert f"alias 'production' of {NAME} left where it was" in output
    assert "int8-static" not in output  # it stopped after the reference variant failed
    assert client.get_model_version_by_alias(NAME, "production").version == before
    assert len(client.search_model_versions(f"name='{NAME}'")) == versions


def test_a_bundle_with_one_flipped_byte_is_refused_at_load(exported: Exported) -> None:
    copy = exported.workdir / "tampered"
    shutil.copytree(exported.bundle.path, copy)
    target = copy / "model.int8-static.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for 'model\.int8-static\.onnx'"):
        open_bundle(copy)


def serve(exported: Exported, variant: str) -> Iterator[tuple[str, Path, object]]:
    port = free_port()
    log = exported.workdir / f"serve-{variant}.log"
    env = {
        "MLFLOW_TRACKING_URI": exported.tracking_uri,
        "MODEL_URI": f"models:/{NAME}@production",
        "MODEL_VARIANT": variant,
        "MODEL_CACHE_DIR": str(exported.workdir / f"cache-{variant}"),
        "ONNX_INTRA_OP_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "services.classify", "--port", str(port)]
    with running(cmd, log, env) as proc:
        wait_http(f"http://127.0.0.1:{port}/livez", proc, log)
        yield f"http://127.0.0.1:{port}", log, proc


def test_service_serves_a_non_default_variant_and_reports_it(exported: Exported) -> None:
    variant = "int8-static" if exported.bundle.default_variant != "int8-static" else "fp32"
    for url, log, proc in serve(exported, variant):
        wait_http(f"{url}/readyz", proc, log)
        with httpx.Client(base_url=url, timeout=30) as http:
            info = http.get("/v1/model").json()
            assert (info["name"], info["variant"]) == (NAME, variant)
            assert sorted(info["variants"]) == sorted(VARIANTS)
            metrics = http.get("/metrics").text
        assert f'name="{NAME}",service="classify",variant="{variant}"' in metrics


def test_unknown_variant_is_a_startup_error_that_lists_the_variants(exported: Exported) -> None:
    for url, log, _ in serve(exported, "int4"):
        readyz = poll_until(  # the first load attempt runs right after start
            lambda u=url: readyz_saying(u, "variant 'int4'"),
            10,
            "the unknown-variant error reported",
        )
        assert readyz.status_code == 503, tail(log)
        detail = readyz.json()["detail"]
        assert "variant 'int4' is not in bundle 'exp'; it has: " in detail
        assert "fp32, int8-dynamic, int8-qat, int8-static, pruned, pruned-int8" in detail
