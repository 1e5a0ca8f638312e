"""The explain service: Captum attributions, fidelity scores and feature maps of the classify
model's torch weights (autograd), preprocessed exactly as classify does, so its prediction is
classify's. Each explanation runs on one of INFERENCE_WORKERS replicas (the `explain` pool)."""

from __future__ import annotations

import copy
import logging
import queue
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.attribution import (
    Explainer,
    block_layers,
    cam_candidates,
    evaluations,
    feature_maps,
    first_conv,
)
from models.fidelity import LayerScore, best_layer, layer_scores
from models.fidelity import evaluations as fidelity_evaluations
from models.methods import METHODS, PARAMS_OF, MethodParams
from services.explain import jobs
from services.explain.jobs import ActivationsJob, ExplainJob
from services.explain.parity import parity_reference
from services.explain.schemas import (
    MAX_EVALUATIONS,
    ActivationsBody,
    ActivationsResponse,
    CompareBody,
    CompareResponse,
    ExplainBody,
    ExplainResponse,
    FiltersResponse,
)
from services.explain.settings import ExplainSettings
from shared.bundle import Bundle
from shared.errors import BundleError, InferenceError, InvalidParameterError, ServingError
from shared.media import ImageSpec, decode_base64, decode_image, image_to_array
from shared.predlog import summarize_input
from shared.service import Call, Endpoint, Lane, ModelService, ModelSpec, Pool, Service
from shared.settings import ServingSettings

log = logging.getLogger("modelplane.explain")

#: what GET /v1/model and every response call the weights explained
WEIGHTS_VARIANT = "torch"
_CAM_METHODS = ("grad_cam", "guided_grad_cam")
# A torch bundle's sample outputs come from the fp32 ONNX export; parity there is 1e-4.
_SMOKE_ATOL = 1e-3
#: sample inputs Grad-CAM's default layer is measured on at load
_LAYER_SAMPLES = 8


class ExplainModel(ModelService):
    """Image → attribution heatmaps, fidelity scores, feature maps and filters."""

    fixed_variant = WEIGHTS_VARIANT  # autograd needs the torch weights, whatever MODEL_VARIANT

    def load(self, bundle: Bundle, variant: str, settings: ServingSettings) -> None:
        from models.classify import load_torch_bundle

        manifest = bundle.manifest
        if manifest.get("task") != "classify" or not {"architecture", "torch_weights"} <= set(
            manifest
        ):
            raise BundleError(
                f"{bundle.name} is not a classify bundle with torch weights (manifest keys "
                "'architecture' and 'torch_weights'); explain needs autograd through PyTorch"
            )
        workers = settings.inference_workers
        self.threads = max(1, settings.intra_op_threads() // workers)
        torch.set_num_threads(self.threads)  # per-worker share: replicas never oversubscribe
        self.bundle = bundle
        self.spec = ImageSpec.from_manifest(bundle.preprocessing)
        self.labels = bundle.labels
        self.max_pixels = settings.max_image_pixels
        model = load_torch_bundle(bundle)
        self.maps = feature_maps(model, self.spec)
        self.blocks = block_layers(model, self.maps)
        self.candidates = cam_candidates(model, self.maps)
        self.default_layer = list(self.candidates)[-1]  # until warmup has measured them
        self.layer_choice: list[LayerScore] = []
        self.layer_samples = 0
        self.first_conv = first_conv(model)[0]
        replicas = [Explainer.build(model, self.spec)]
        replicas += [Explainer.build(copy.deepcopy(model), self.spec) for _ in range(workers - 1)]
        self.replicas: queue.SimpleQueue[Explainer] = queue.SimpleQueue()
        for replica in replicas:
            self.replicas.put(replica)
        self.reference = replicas[0]

    def warmup(self) -> None:
        """Check the torch weights against the fp32 export's outputs, then choose Grad-CAM's
        default layer by measuring each block on the sample inputs (explaining warms up)."""
        sample, expected = parity_reference(self.bundle)
        with torch.no_grad():
            logits = self.reference.model(torch.from_numpy(sample)).numpy()
        diff = float(np.max(np.abs(logits - expected)))
        if diff > _SMOKE_ATOL:
            raise BundleError(
                f"the torch weights disagree with the fp32 export by {diff:.2e} "
                f"(> {_SMOKE_ATOL:.0e}): the bundle's weights are not its ONNX model's"
            )
        log.info("torch weights agree with the fp32 export: max abs diff %.2e", diff)
        samples = torch.from_numpy(sample[:_LAYER_SAMPLES])
        self.layer_choice = layer_scores(self.reference, self.candidates, samples)
        self.default_layer = best_layer(self.layer_choice)
        self.layer_samples = len(samples)
        log.info(
            "Grad-CAM default layer %s, measured on %d sample inputs: %s",
            self.default_layer,
            len(samples),
            [s.to_dict() for s in self.layer_choice],
        )

    def describe(self) -> dict[str, Any]:
        return {
            "task": "explain",
            "explains": {"weights": self.bundle.manifest["torch_weights"], "variant": "torch"},
            "labels": self.labels,
            "preprocessing": self.bundle.preprocessing,
            "methods": list(METHODS),
            "params_of": {m: sorted(PARAMS_OF[m]) for m in (*METHODS, "random")},
            "max_evaluations": MAX_EVALUATIONS,
            "default_layer": self.default_layer,
            "default_layer_choice": {
                "rule": "highest insertion - deletion AUC of Grad-CAM among maps >= 2x2",
                "measured_on": f"{self.layer_samples} sample inputs of the bundle",
                "layers": [s.to_dict() for s in self.layer_choice],
            },
            "layers": {name: list(self.maps[name]) for name in self.blocks},
            "first_conv": self.first_conv,
            "torch_threads": self.threads,
        }

    # ---- validation (preprocess, one per endpoint: a worker thread, before the queue) -----
    def _image(self, encoded: str) -> tuple[Image.Image, np.ndarray]:
        image = decode_image(decode_base64(encoded), self.max_pixels)
        return image, image_to_array(image, self.spec)

    def explain_job(self, body: ExplainBody) -> ExplainJob:
        """/v1/explain: one method, its params checked, fidelity when asked."""
        return self._job(body, {body.method: body.params}, body.fidelity, compare=False)

    def compare_job(self, body: CompareBody) -> ExplainJob:
        """/v1/explain/compare: distinct methods, params only for those, fidelity always."""
        methods = list(body.methods)
        if len(set(methods)) != len(methods):
            raise InvalidParameterError(f"methods must be distinct, got {methods}")
        stray = sorted(set(body.params) - set(methods))
        if stray:
            raise InvalidParameterError(f"params given for methods not compared: {stray}")
        by_method = {m: body.params.get(m, MethodParams()) for m in methods}
        return self._job(body, by_method, fidelity=True, compare=True)

    def activations_job(self, body: ActivationsBody) -> ActivationsJob:
        """/v1/explain/activations: a layer with a feature map, at most its channels."""
        _, x = self._image(body.image)
        layer = self._layer(body.layer, "layer")
        return ActivationsJob(x, layer, min(body.top_n, self.maps[layer][0]))

    def _job(
        self,
        body: ExplainBody | CompareBody,
        by_method: dict[str, MethodParams],
        fidelity: bool,
        compare: bool,
    ) -> ExplainJob:
        image, x = self._image(body.image)
        params = {m: self._check_params(m, p) for m, p in by_method.items()}
        self._check_cost(params, fidelity)
        return ExplainJob(
            image=image,
            x=x,
            methods=tuple(by_method),
            params=params,
            target=self._target(body.target),
            return_map=isinstance(body, ExplainBody) and body.return_map,
            fidelity=fidelity,
            compare=compare,
        )

    def _check_params(self, method: str, params: MethodParams) -> MethodParams:
        stray = sorted(params.model_fields_set - PARAMS_OF[method])
        if stray:
            takes = ", ".join(sorted(PARAMS_OF[method])) or "no parameters"
            raise InvalidParameterError(
                f"params {stray} do not apply to {method}; {method} takes: {takes}"
            )
        if method == "cam" and self.reference.cam is None:
            raise InvalidParameterError(
                "cam needs a network that global-average-pools into a linear head; this one "
                "does not: use grad_cam"
            )
        if method == "occlusion":
            side = min(self.spec.height, self.spec.width)
            if params.window > side or params.stride > side:
                raise InvalidParameterError(
                    f"params.window and params.stride must be at most the model input "
                    f"({self.spec.height}x{self.spec.width}); got {params.window}, {params.stride}"
                )
        needs_layer = method in _CAM_METHODS or (
            method == "smoothgrad" and params.base in _CAM_METHODS
        )
        if needs_layer:
            return params.model_copy(update={"layer": self._layer(params.layer, "params.layer")})
        if params.layer is not None:
            raise InvalidParameterError(f"params.layer only applies to {', '.join(_CAM_METHODS)}")
        return params

    def _layer(self, name: str | None, field: str) -> str:
        layer = name or self.default_layer
        if layer not in self.maps:
            raise InvalidParameterError(
                f"{field} {layer!r} is not a layer with a feature map; blocks: "
                f"{', '.join(self.blocks)} (GET /v1/model lists them with their shapes)"
            )
        return layer

    def _target(self, target: int | str) -> int | None:
        if target == "predicted":
            return None
        if not isinstance(target, int) or target >= len(self.labels):
            raise InvalidParameterError(
                f"target must be 'predicted' or a class index from 0 to {len(self.labels) - 1}"
            )
        return target

    def _check_cost(self, params: dict[str, MethodParams], fidelity: bool) -> None:
        total = 0
        for method, p in params.items():
            cost = evaluations(method, p, self.spec)
            total += cost + (fidelity_evaluations(cost, method != "random") if fidelity else 0)
        if total > MAX_EVALUATIONS:
            raise InvalidParameterError(
                f"this request needs {total} model evaluations; the bound is {MAX_EVALUATIONS} "
                "per request (fewer steps, samples or methods, a larger occlusion stride, or "
                "no fidelity)"
            )

    # ---- work (on the `explain` pool: INFERENCE_WORKERS at once, one replica each) -------
    def explanation(self, job: ExplainJob, call: Call) -> dict[str, Any]:
        return self._on_replica(lambda e: jobs.run_explain(e, job, self.labels))

    def activations(self, job: ActivationsJob, call: Call) -> dict[str, Any]:
        return self._on_replica(lambda e: jobs.run_activations(e, job, self.labels))

    def filters(self, _: None, call: Call) -> dict[str, Any]:
        return self._on_replica(jobs.run_filters)

    def _on_replica(self, work: Callable[[Explainer], dict[str, Any]]) -> dict[str, Any]:
        """Work on a free replica; the input was validated, so a failure is the server's."""
        explainer = self.replicas.get()
        try:
            return work(explainer)
        except ServingError:
            raise
        except Exception as exc:
            log.exception("explanation failed")
            raise InferenceError(f"explanation failed: {type(exc).__name__}") from exc
        finally:
            self.replicas.put(explainer)

    def summarize_call(
        self, work: ExplainJob | ActivationsJob, output: dict[str, Any]
    ) -> dict[str, Any]:
        """The prediction log's item: the image tensor (hash, mean, std), what was asked
        (methods and target, or the layer) and the prediction explained."""
        if isinstance(work, ExplainJob):
            target = "predicted" if work.target is None else work.target
            asked = {"methods": list(work.methods), "target": target, "fidelity": work.fidelity}
        else:
            asked = {"layer": work.layer, "top_n": work.top_n}
        predicted = output.get("prediction", {})
        return {
            "input": {**summarize_input(work.x), **asked},
            "output": {
                "label": predicted.get("label"),
                "score": round(float(predicted.get("score", 0.0)), 6),
                "timing_ms": round(float(output.get("timing_ms", 0.0)), 3),
            },
        }


def _explaining(path: str, summary: str, body: type, prepare: Any, answer: type) -> Endpoint:
    call = ExplainModel.activations if body is ActivationsBody else ExplainModel.explanation
    return Endpoint(
        path, Lane.DIRECT, summary, body=body, preprocess=prepare, call=call, pool="explain",
        response=answer,
    )  # fmt: skip


class ExplainService(Service):
    """Captum explanations of the classify model (its torch weights), one job per worker."""

    name = "explain"
    settings_class = ExplainSettings
    # it explains the classifier, not a model of its own
    models = (ModelSpec("classify", ExplainModel, "classify"),)
    pools = (Pool("explain", workers="inference_workers", queue="max_queue"),)
    endpoints = (
        _explaining(
            "/v1/explain",
            "Explain one prediction with one attribution method; a heatmap over the input.",
            ExplainBody,
            ExplainModel.explain_job,
            ExplainResponse,
        ),
        _explaining(
            "/v1/explain/compare",
            "Several methods on one image: a side-by-side panel and each one's fidelity.",
            CompareBody,
            ExplainModel.compare_job,
            CompareResponse,
        ),
        _explaining(
            "/v1/explain/activations",
            "The top-N channels (by mean activation) of a named layer as a PNG grid.",
            ActivationsBody,
            ExplainModel.activations_job,
            ActivationsResponse,
        ),
        Endpoint(
            "/v1/explain/filters",
            Lane.DIRECT,
            "The first conv layer's filters as a PNG grid.",
            method="GET",
            call=ExplainModel.filters,
            pool="explain",
            response=FiltersResponse,
            errors=(401, 503),
        ),
    )
