"""The benchmark's peers: the same ONNX file served by LitServe and by `mlflow models serve`.

Both load the bundle's variant with modelplane's own session options (`shared.onnx`: the same
intra-op threads, no spinning) and its own preprocessing (`shared.media`), and answer the
top-5 labels with softmax scores, so the only difference measured is the server around the
model. Neither accepts a raw PNG body: both are sent `{"image": "<base64 PNG>"}` (LitServe)
or `{"inputs": ["<base64 PNG>"]}` (mlflow's scoring protocol).

- LitServe: its own dynamic batching (`--max-batch-size` 16, `--batch-timeout` 2 ms), one
  inference worker process, one API server process.
- mlflow: a pyfunc saved as *models from code* (`loadtests/mlflow_peer_model.py`, nothing
  pickled), served with `mlflow models serve --env-manager local --workers 1`. This peer
  exists for the benchmark only; modelplane's serving path never loads a pyfunc.

    python -m loadtests.peers litserve BUNDLE_DIR VARIANT PORT THREADS
    python -m loadtests.peers mlflow-save BUNDLE_DIR VARIANT THREADS OUT_DIR
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import numpy as np

TOP_K = 5


class OnnxClassifier:
    """A bundle variant in onnxruntime with modelplane's preprocessing and answer."""

    def __init__(self, bundle_dir: Path, variant: str, threads: int) -> None:
        from shared.bundle import open_bundle
        from shared.media import ImageSpec
        from shared.onnx import OnnxModel

        bundle = open_bundle(bundle_dir)
        self.model = OnnxModel.from_bundle(bundle, variant, threads)
        self.spec = ImageSpec.from_manifest(bundle.preprocessing)
        self.labels = bundle.labels
        self.input_name = self.model.inputs[0].name

    def decode(self, image_b64: str) -> np.ndarray:
        from shared.media import decode_image, image_to_array

        return image_to_array(decode_image(base64.b64decode(image_b64), 4096 * 4096), self.spec)

    def predict(self, rows: list[np.ndarray]) -> np.ndarray:
        return self.model.session.run(None, {self.input_name: np.stack(rows)})[0]

    def answer(self, logits: np.ndarray) -> dict[str, Any]:
        shifted = np.exp(logits - logits.max())
        scores = shifted / shifted.sum()
        order = np.argsort(-scores, kind="stable")[:TOP_K]
        return {
            "predictions": [{"label": self.labels[i], "score": float(scores[i])} for i in order]
        }


def serve_litserve(bundle_dir: Path, variant: str, port: int, threads: int) -> None:
    """LitServe on 127.0.0.1:`port`, POST /predict, batching 16 / 2 ms."""
    import litserve as ls

    from loadtests.litserve_peer import OnnxLitApi

    api = OnnxLitApi(str(bundle_dir), variant, threads, max_batch_size=16, batch_timeout=0.002)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30)
    server.run(
        host="127.0.0.1",
        port=port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


def save_mlflow_model(bundle_dir: Path, variant: str, threads: int, out_dir: Path) -> None:
    """An mlflow pyfunc (models from code) over the variant's ONNX file, saved to `out_dir`."""
    import mlflow.pyfunc

    code = Path(__file__).with_name("mlflow_peer_model.py")
    mlflow.pyfunc.save_model(
        path=str(out_dir),
        python_model=str(code),
        artifacts={"bundle": str(bundle_dir)},
        model_config={"variant": variant, "threads": threads},
        pip_requirements=[],
    )


def main(argv: list[str]) -> int:
    what, bundle, variant, *rest = argv
    if what == "litserve":
        serve_litserve(Path(bundle), variant, int(rest[0]), int(rest[1]))
    elif what == "mlflow-save":
        save_mlflow_model(Path(bundle), variant, int(rest[0]), Path(rest[1]))
    else:
        raise SystemExit(f"unknown peer {what!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
