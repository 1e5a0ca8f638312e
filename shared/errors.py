"""Errors that carry their HTTP status (no web framework imported: training uses them too).

`shared.problem` renders every one of them as application/problem+json.
"""

from __future__ import annotations


class BundleError(Exception):
    """A bundle is missing, malformed or fails its checksums; it must not be served."""


class RegistryError(Exception):
    """The model registry could not resolve or deliver a model, and no verified cache exists."""


class ServingError(Exception):
    """Base of every error a request can end in; `status` and `code` go to the client."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal Server Error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class InvalidInputError(ServingError):
    status, code, title = 400, "invalid_input", "Bad Request"


class InvalidParameterError(ServingError):
    status, code, title = 422, "invalid_parameter", "Unprocessable Content"


class UnauthorizedError(ServingError):
    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str = "a valid bearer token is required") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class ModelNotFoundError(ServingError):
    status, code, title = 404, "model_not_found", "Not Found"


class PayloadTooLargeError(ServingError):
    status, code, title = 413, "payload_too_large", "Payload Too Large"


class UnsupportedMediaTypeError(ServingError):
    status, code, title = 415, "unsupported_media_type", "Unsupported Media Type"


class ModelNotReadyError(ServingError):
    status, code, title = 503, "model_not_ready", "Service Unavailable"

    def __init__(self, detail: str = "the model is not loaded yet; retry shortly") -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class OverloadedError(ServingError):
    status, code, title = 503, "overloaded", "Service Unavailable"

    def __init__(self, detail: str = "the server is at capacity; retry shortly") -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class DeadlineExceededError(ServingError):
    status, code, title = 504, "deadline_exceeded", "Gateway Timeout"


class InferenceError(ServingError):
    status, code, title = 500, "inference_failed", "Internal Server Error"


class RateLimitedError(ServingError):
    status, code, title = 429, "rate_limited", "Too Many Requests"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            f"this client is over its request rate; retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )
