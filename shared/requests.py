"""Reading request bodies one way in every service: media type, JSON into a pydantic model."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import InvalidInputError, InvalidParameterError, UnsupportedMediaTypeError

BodyT = TypeVar("BodyT", bound=BaseModel)


class RequestBody(BaseModel):
    """Base of every JSON request body: unknown fields are refused (a misspelt option is an
    error, not silently ignored), so are NaN and infinite numbers (JSON has none, but Python's
    and pydantic's parsers accept `NaN`, `Infinity` and 1e999), and values are taken as the
    schema types them (strict: no "8" or true for 8, no 1 for true)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower case ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_json(raw: bytes | str, model: type[BodyT]) -> BodyT:
    """`raw` validated as `model`; a violated bound or a malformed body is a 422 naming it."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidParameterError(detail) from exc


async def read_json(request: Request, model: type[BodyT]) -> BodyT:
    """The body of a JSON route: 415 for any other content type, a string holding a lone
    surrogate is named (400), then `parse_json`."""
    kind = media_type(request)
    if kind != "application/json":
        raise UnsupportedMediaTypeError(
            f"content type {kind or '(none)'!r} is not accepted; send application/json"
        )
    raw = await request.body()
    if b"\\u" in raw:  # only an escape can spell a lone surrogate in valid UTF-8 JSON
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None  # parse_json below reports the JSON error as a 422
        if where := lone_surrogate_path(parsed, "body"):
            raise InvalidInputError(
                f"{where.removeprefix('body.')} is not valid Unicode: it holds a lone surrogate "
                "(an unpaired \\ud800-\\udfff escape)"
            )
    return parse_json(raw, model)


def lone_surrogate_path(value: Any, path: str) -> str | None:
    """The path of the first string holding a lone surrogate (JSON allows `\\ud800`)."""
    if isinstance(value, str):
        return path if any(0xD800 <= ord(c) <= 0xDFFF for c in value) else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = lone_surrogate_path(
            item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
        )
        if found:
            return found
    return None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a route's JSON request body (routes that read it themselves).

    Nested models are inlined: pydantic refers to them as `#/$defs/X`, which inside an
    operation resolves against the whole OpenAPI document, where no `$defs` exist, so clients
    and schemathesis would not see them (request models are never recursive)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    content = {"application/json": {"schema": _inlined(schema, defs)}}
    return {"requestBody": {"required": True, "content": content}}


def _inlined(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with each `#/$defs/X` reference replaced by X itself."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inlined(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inlined(item, defs) for item in node]
    return node


_DESCRIPTIONS = {
    400: "Malformed input (not base64, not an image, a bad tensor payload)",
    401: "Missing or wrong bearer token (when API_TOKEN is set)",
    404: "No such model or version",
    413: "Body or image over its limit",
    415: "Unsupported content type",
    422: "A parameter out of its bounds (the detail names it)",
    429: "This client is over its rate limit (Retry-After)",
    503: "Not ready, or at capacity: queue full or too many requests in flight (Retry-After)",
    504: "The request waited past its deadline",
}


def error_responses(
    *codes: int, media_type: str = "application/problem+json"
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the errors a route can answer (problem+json unless it says)."""
    content = {media_type: {"schema": {"type": "object"}}}
    return {code: {"description": _DESCRIPTIONS[code], "content": content} for code in codes}
