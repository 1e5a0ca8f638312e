"""The Open Inference Protocol's gRPC messages to and from the V2 codec's checked arrays.

A ModelInferRequest becomes the same header + binary tail the REST codec parses (raw contents
as binary data, typed contents as data), so both protocols accept and refuse exactly the same
tensors with the same messages; the answer carries every output in raw_output_contents, as
Triton's does. Stubs are the ones tritonclient ships (never hand-edited).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from shared.bundle import TensorSpec
from shared.errors import InvalidInputError
from shared.v2codec import DATATYPES, parse_inputs, v2_datatype

#: the InferTensorContents field that holds each datatype's typed values (FP16: raw only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_FIELD_DTYPE = {
    "bool_contents": np.bool_,
    "int_contents": np.int64,  # int32 on the wire; int64 here so range checks see the value
    "int64_contents": np.int64,
    "uint_contents": np.uint64,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


def _typed_data(tensor: Any) -> np.ndarray:
    """The values of an input sent as typed contents, from the field its datatype names."""
    where = f"input {tensor.name!r}"
    field = CONTENTS_FIELD.get(tensor.datatype)
    filled = [f.name for f, _ in tensor.contents.ListFields()]
    if field is None:
        raise InvalidInputError(
            f"{where}: {tensor.datatype} has no typed contents; send it in raw_input_contents"
        )
    if filled and filled != [field]:
        raise InvalidInputError(f"{where}: {tensor.datatype} values go in {field}, got {filled}")
    return np.asarray(getattr(tensor.contents, field), dtype=_FIELD_DTYPE[field])


def request_arrays(request: Any, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The checked input arrays of a ModelInferRequest; InvalidInputError for what the model
    cannot take (names, datatypes, shapes, sizes, non-finite values), as over REST."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send every input "
            "raw, in the order of `inputs`, or every one as typed contents"
        )
    entries: list[dict[str, Any]] = []
    for index, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": list(tensor.shape),
            "datatype": tensor.datatype,
        }
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInputError(
                    f"input {tensor.name!r} has typed contents beside raw_input_contents"
                )
            entry["parameters"] = {"binary_data_size": len(raw[index])}
        elif tensor.datatype in DATATYPES:  # an unknown datatype is refused by the codec
            if not tensor.HasField("contents"):
                raise InvalidInputError(
                    f"input {tensor.name!r} has neither contents nor raw_input_contents"
                )
            entry["data"] = _typed_data(tensor)
        entries.append(entry)
    binary = memoryview(b"".join(raw))
    return parse_inputs({"inputs": entries}, binary, specs)


def response(
    request: Any, name: str, version: str, outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    """The ModelInferResponse with the outputs the request names (all when it names none)."""
    selection = [wanted.name for wanted in request.outputs] or list(outputs)
    for wanted in request.outputs:
        if wanted.name not in outputs:
            raise InvalidInputError(
                f"unknown output {wanted.name!r}; the model has {sorted(outputs)}"
            )
        if "classification" in wanted.parameters:
            raise InvalidInputError(f"output {wanted.name!r}: classification is not supported")
    answer = pb.ModelInferResponse(model_name=name, model_version=version, id=request.id)
    for output in selection:
        array = np.ascontiguousarray(outputs[output])
        answer.outputs.add(
            name=output, datatype=v2_datatype(array.dtype.name), shape=list(array.shape)
        )
        answer.raw_output_contents.append(array.tobytes())
    return answer


def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=v2_datatype(spec.dtype), shape=list(spec.shape)
    )
