"""The LitServe peer's API (`loadtests/peers.py`): a module-level class, because LitServe
starts its inference worker with multiprocessing's spawn and pickles the API object to it
(three strings and numbers; the model is loaded in `setup`, in the worker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

from loadtests.peers import OnnxClassifier


class OnnxLitApi(ls.LitAPI):  # type: ignore[misc]
    """Base64 PNG JSON in, top-5 labels out; LitServe batches the decoded rows."""

    def __init__(self, bundle_dir: str, variant: str, threads: int, **options: Any) -> None:
        super().__init__(**options)
        self.bundle_dir = bundle_dir
        self.variant = variant
        self.threads = threads

    def setup(self, device: str) -> None:
        self.classifier = OnnxClassifier(Path(self.bundle_dir), self.variant, self.threads)

    # no annotation on `request`: LitServe reads it to pick the body's type (none: JSON)
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return self.classifier.decode(request["image"])

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs

    def predict(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.classifier.predict(rows))

    def unbatch(self, output: list[np.ndarray]) -> list[np.ndarray]:
        return output

    def encode_response(self, logits: np.ndarray) -> dict[str, Any]:
        return self.classifier.answer(logits)
