"""Property tests of every decoder a request body goes through, in process (hypothesis).

The one property: whatever the bytes, a decoder returns a valid value or raises the client's
error (a 4xx); it never raises anything else (which would be a 500). Valid inputs round-trip.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from services.classify.schemas import ClassifyBody
from services.similarity.schemas import GalleryAddBody
from services.text.tokens import check_text
from shared.bundle import TensorSpec
from shared.errors import InvalidInputError, ServingError
from shared.media import decode_base64, decode_image
from shared.requests import RequestBody, parse_json
from shared.v2codec import DATATYPES, parse_inputs, split_body

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


def refusal(call: Callable[[], Any], status: int | None = None) -> Any:
    """`call()`'s value, or None when it raised the client's error (`status` when given).

    Anything else escaping (which the service would answer with a 500) fails the test."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - which exceptions escape is the property
        wanted = isinstance(exc, ServingError) and 400 <= exc.status < 500
        assert wanted and status in (None, exc.status), repr(exc)
        return None


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


# ---- base64 --------------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=64))
def test_any_text_decodes_as_base64_or_is_a_400(text: str) -> None:
    decoded = refusal(lambda: decode_base64(text), 400)
    assert decoded is None or isinstance(decoded, bytes)


@FUZZ
@given(st.binary(max_size=256), st.booleans())
def test_base64_round_trips(data: bytes, as_data_url: bool) -> None:
    text = base64.b64encode(data).decode()
    assert decode_base64(f"data:image/png;base64,{text}" if as_data_url else text) == data


# ---- images --------------------------------------------------------------------------------

VALID_PNG = png(np.arange(64, dtype=np.uint8).reshape(8, 8))


@FUZZ
@given(st.binary(max_size=512))
def test_any_bytes_decode_as_an_image_or_are_a_4xx(data: bytes) -> None:
    image = refusal(lambda: decode_image(data, max_pixels=4096))
    assert image is None or image.width * image.height > 0


@FUZZ
@given(st.integers(0, len(VALID_PNG) - 1), st.integers(0, 255), st.integers(1, len(VALID_PNG)))
def test_corrupted_or_truncated_pngs_are_a_4xx(position: int, byte: int, keep: int) -> None:
    damaged = bytearray(VALID_PNG[:keep])
    if position < len(damaged):
        damaged[position] = byte
    image = refusal(lambda: decode_image(bytes(damaged), max_pixels=4096))
    assert image is None or image.size == (8, 8)


@FUZZ
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24)))
def test_pngs_decode_to_their_pixels_and_the_pixel_cap_holds(pixels: np.ndarray) -> None:
    data = png(pixels)
    cap = 100
    if pixels.size > cap:
        with pytest.raises(ServingError) as refused:
            decode_image(data, max_pixels=cap)
        assert refused.value.status == 413
    else:
        assert np.array_equal(np.asarray(decode_image(data, max_pixels=cap)), pixels)


# ---- V2 tensors ----------------------------------------------------------------------------

SPECS = [TensorSpec("input", "float32", [-1, 3])]


def parse(body: bytes, header_length: str | None = None) -> dict[str, np.ndarray]:
    header, binary = split_body(body, header_length)
    return parse_inputs(header, binary, SPECS)


@FUZZ
@given(JSON)
def test_any_json_header_parses_or_is_a_protocol_400(value: Any) -> None:
    body = json.dumps({"inputs": [value]} if not isinstance(value, dict) else value).encode()
    try:
        arrays = parse(body)
    except InvalidInputError as exc:
        assert exc.status == 400
    else:  # accepted: exactly what the spec asks for
        assert arrays["input"].dtype == np.float32 and arrays["input"].shape[1:] == (3,)


@FUZZ
@given(
    st.sampled_from(sorted(DATATYPES)),
    st.lists(st.integers(0, 4), max_size=3),
    st.one_of(JSON, st.lists(st.floats() | st.integers(), max_size=12)),
)
def test_any_input_object_parses_or_is_a_protocol_400(
    datatype: str, shape: list[int], data: Any
) -> None:
    raw = {"name": "input", "datatype": datatype, "shape": shape, "data": data}
    try:
        parse(json.dumps({"inputs": [raw]}).encode())
    except InvalidInputError as exc:
        assert exc.status == 400


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 80), st.integers(-1, 80))
def test_any_binary_tail_parses_or_is_a_protocol_400(tail: bytes, rows: int, size: int) -> None:
    params = {"binary_data_size": size} if size >= 0 else {}
    raw = {"name": "input", "datatype": "FP32", "shape": [rows, 3], "parameters": params}
    header = json.dumps({"inputs": [raw]}).encode()
    try:
        arrays = parse(header + tail, str(len(header)))
    except InvalidInputError as exc:
        assert exc.status == 400
    else:
        assert np.all(np.isfinite(arrays["input"]))  # NaN bits are refused too


FINITE = st.floats(-(2.0**100), 2.0**100, width=32)


@FUZZ
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.just(3)), elements=FINITE))
def test_tensors_round_trip_as_json_and_binary(array: np.ndarray) -> None:
    shape = list(array.shape)
    as_json = {"name": "input", "datatype": "FP32", "shape": shape, "data": array.ravel().tolist()}
    assert np.array_equal(parse(json.dumps({"inputs": [as_json]}).encode())["input"], array)
    raw = array.tobytes()
    as_binary = {**as_json, "parameters": {"binary_data_size": len(raw)}}
    del as_binary["data"]
    header = json.dumps({"inputs": [as_binary]}).encode()
    assert np.array_equal(parse(header + raw, str(len(header)))["input"], array)


# ---- text and JSON bodies ------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=64) | st.text(st.characters(codec="utf-16", exclude_categories=[])))
def test_any_text_is_checked_or_is_a_400(text: str) -> None:
    if refusal(lambda: check_text(text, "text", max_chars=32) or True, 400):
        assert text.strip() and len(text) <= 32 and "\x00" not in text
        text.encode("utf-8")  # what the tokenizer receives is encodable


@FUZZ
@given(JSON | st.text(max_size=16), st.sampled_from([ClassifyBody, GalleryAddBody]))
def test_any_json_body_validates_or_is_a_422(value: Any, model: type[RequestBody]) -> None:
    raw = value if isinstance(value, str) else json.dumps(value)
    body = refusal(lambda: parse_json(raw, model), 422)
    assert body is None or isinstance(body, model)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused_in_every_body(number: str) -> None:
    class Body(RequestBody):
        x: float = 0.0

    with pytest.raises(ServingError) as refused:
        parse_json(f'{{"x": {number}}}', Body)
    assert refused.value.status == 422 and "x" in refused.value.detail
    assert math.isfinite(parse_json('{"x": 1e300}', Body).x)
