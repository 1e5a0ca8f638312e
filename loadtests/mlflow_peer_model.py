"""The mlflow peer of `make bench-serve` as *models from code*: mlflow imports this file at
serve time (nothing is pickled). It needs the repository on PYTHONPATH (for `shared` and
`loadtests.peers`), which the benchmark sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.models import set_model


class OnnxPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Base64 PNGs in (a list or an `image` column), top-5 labels out, one row each."""

    def load_context(self, context: Any) -> None:
        from loadtests.peers import OnnxClassifier

        config = context.model_config
        self.classifier = OnnxClassifier(
            Path(context.artifacts["bundle"]), config["variant"], int(config["threads"])
        )

    def predict(self, context: Any, model_input: Any, params: Any = None) -> list[dict[str, Any]]:
        images = model_input["image"] if hasattr(model_input, "columns") else model_input
        if hasattr(images, "columns"):  # a one-column frame from a bare list
            images = images.iloc[:, 0]
        rows = [self.classifier.decode(str(image)) for image in list(images)]
        return [self.classifier.answer(logits) for logits in self.classifier.predict(rows)]


set_model(OnnxPyfunc())
