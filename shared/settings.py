"""ServingSettings: every knob a service reads, from environment variables, documented per field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.layout import cpu_budget
from shared.registry import RegistryClient


def available_cores() -> int:
    """Cores this process may use: its affinity capped by its cgroup CPU quota (rounded up),
    unlike os.cpu_count (shared/layout.py)."""
    return cpu_budget()


class ServingSettings(BaseSettings):
    """Configuration of one service process; built in `create_app`, never at import time."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    mlflow_tracking_uri: str = Field(
        "http://127.0.0.1:5000", description="MLflow tracking server and model registry URL."
    )
    model_uri: str = Field(
        "",
        description="Model to serve, models:/NAME@ALIAS or models:/NAME/VERSION; "
        "empty means models:/<service>@production.",
    )
    model_variant: str = Field(
        "",
        description="Bundle variant to load (fp32, int8-static, ...); empty = the bundle default.",
    )
    model_cache_dir: Path = Field(
        Path(".modelplane/cache"), description="Local directory of verified downloaded bundles."
    )
    onnx_intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="onnxruntime intra-op threads; 0 = the cores available (cgroup quota "
        "included), split between INFERENCE_WORKERS for batched ONNX services (shared/layout.py).",
    )
    inference_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Batches that may run predict() at once (executor threads).",
    )
    server_processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes serving the port together (SO_REUSEPORT), each with its own "
        "models; their metrics are aggregated (Prometheus multiprocess mode). 0 = the layout's "
        "choice from the CPU budget for batched ONNX services, else 1 (shared/layout.py, "
        "shared/supervisor.py).",
    )
    preprocess_workers: int = Field(
        0, ge=0, le=64, description="Threads decoding and preprocessing requests; 0 = cores."
    )
    preprocess_inline_us: float = Field(
        300.0,
        ge=0,
        le=1_000_000,
        description="An endpoint whose preprocessing has lately taken at most this long (a "
        "moving average, in microseconds) preprocesses on the event loop, without the hand-off "
        "to PREPROCESS_WORKERS and back; 0 = always on the workers.",
    )
    max_batch_size: int = Field(
        32, ge=1, le=1024, description="Largest dynamic batch; 1 turns batching off."
    )
    max_delay_ms: float = Field(
        2.0, ge=0, le=1000, description="How long a batch waits for more requests after its first."
    )
    max_queue: int = Field(
        256, ge=1, le=100_000, description="Requests that may wait for a batch; beyond: 503."
    )
    request_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Deadline of a request; expired before inference: 504."
    )
    max_in_flight: int = Field(
        512,
        ge=0,
        description="Work requests (POST to /v1, /v2) handled at once; beyond: 503 with "
        "Retry-After (0: no cap).",
    )
    rate_limit_rps: float = Field(
        0.0,
        ge=0,
        description="Work requests per second per client (bearer token, else IP); beyond: 429 "
        "with Retry-After (0: no limit).",
    )
    rate_limit_burst: int = Field(
        0, ge=0, description="Requests a client may send at once (0: one second's worth)."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="A connection must send a request's complete headers within this (slow "
        "clients, slowloris), measured from connect or from the previous response.",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest accepted request body; larger is a 413."
    )
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=1,
        description="Largest decoded image (width*height), checked before decoding.",
    )
    registry_timeout_s: float = Field(
        5.0, gt=0, description="Timeout of one MLflow registry request."
    )
    mlflow_tracking_token: SecretStr | None = Field(
        None, description="Bearer token sent to the MLflow registry (MLflow's own variable)."
    )
    mlflow_tracking_username: str | None = Field(
        None, description="Basic-auth user for the MLflow registry when no token is set."
    )
    mlflow_tracking_password: SecretStr | None = Field(
        None, description="Basic-auth password of MLFLOW_TRACKING_USERNAME."
    )
    load_retry_max_s: float = Field(
        30.0, gt=0, description="Cap of the backoff between failed model loads."
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token required on /v1 and /v2 routes (empty: no auth)."
    )
    api_token_file: Path | None = Field(
        None, description="A file of accepted bearer tokens, one per line (# comments)."
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve /metrics on this port only (a network policy can then admit only "
        "Prometheus to it); unset: /metrics is on the main port.",
    )
    metrics_addr: str = Field("127.0.0.1", description="Address the metrics port binds to.")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol over gRPC, on the HTTP host (tensor "
        "models only); unset: the service's gRPC port from services/catalog.py when HTTP is on "
        "its catalog port, else none; 0: no gRPC.",
    )
    reload_interval_s: float = Field(
        0.0,
        ge=0,
        description="Check the model alias this often; when it moves, load the new version "
        "beside the old one and switch without dropping requests (0: never).",
    )
    shutdown_drain_s: float = Field(
        0.0,
        ge=0,
        le=300,
        description="On SIGTERM, keep serving (new connections too) this long with /readyz "
        "answering 503, so load balancers stop sending first; then the graceful shutdown.",
    )
    model_control: bool = Field(
        False,
        description="Explicit model control (the protocol's model repository extension: "
        "/v2/repository/... and gRPC Repository*): pin a registered version, return to the "
        "alias; needs API_TOKEN or API_TOKEN_FILE.",
    )
    log_level: str = Field("INFO", description="Python logging level of the service.")
    log_json: bool = Field(True, description="Log JSON lines (false: plain text).")
    prediction_log_rate: float = Field(
        0.0, ge=0, le=1, description="Share of requests written to the prediction log (0: off)."
    )
    prediction_log_dir: Path = Field(
        Path(".modelplane/predictions"),
        description="Directory of the JSONL prediction log, <service>.jsonl (rotated).",
    )
    prediction_log_max_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Size at which the JSONL prediction log rotates."
    )
    prediction_log_backups: int = Field(
        5, ge=0, le=100, description="Rotated JSONL files kept (<service>.jsonl.1 ...)."
    )
    prediction_log_url: str = Field(
        "", description="POST records as CloudEvents (KServe's logger format) here, not to JSONL."
    )
    prediction_log_timeout_s: float = Field(
        1.0, gt=0, le=60, description="Timeout of one CloudEvents POST (then dropped, counted)."
    )
    prediction_log_inputs: bool = Field(
        False, description="Also log each model input tensor (base64); off: hash and summary."
    )
    prediction_log_queue: int = Field(
        1024, ge=1, le=1_000_000, description="Requests waiting to be observed; beyond: dropped."
    )
    drift_enabled: bool = Field(
        True, description="Test live items against the bundle's drift reference (if it has one)."
    )
    drift_window: int = Field(
        200, ge=30, le=100_000, description="Items in the sliding window tested for drift."
    )
    drift_check_every: int = Field(
        50, ge=1, le=100_000, description="Test the window again after this many new items."
    )
    drift_check_interval_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="... and no sooner than this many seconds after the last test (a test "
        "takes milliseconds of a core; under load, every 50 items would be many times a second).",
    )
    drift_p_value: float = Field(
        0.001, gt=0, lt=1, description="A test below this p-value flags drift."
    )

    challenger_alias: str = Field(
        "challenger",
        pattern=r"^[A-Za-z0-9_\-]*$",
        description="Registry alias of a second version served beside production for a rollout "
        "(canary, shadow; see docs/rollouts.md): loaded, verified and followed like production "
        "when it exists; empty: no second version.",
    )
    canary_percent: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Share of requests (%) the challenger answers; sticky per ROLLOUT_KEY_HEADER.",
    )
    shadow_percent: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Share of production's requests (%) also run on the challenger off the "
        "request path; its answer is compared with production's, never returned.",
    )
    shadow_max_in_flight: int = Field(
        2,
        ge=1,
        le=1024,
        description="Shadow runs at once; beyond, or while production's queue is not empty, a "
        "shadow is shed (counted), so shadowing never queues ahead of real requests.",
    )
    rollout_key_header: str = Field(
        "x-rollout-key",
        pattern=r"^[A-Za-z0-9\-]+$",
        description="Request header whose value keeps a client on one version (sticky canary).",
    )

    @model_validator(mode="after")
    def _rollout_is_coherent(self) -> ServingSettings:
        production = self.model_uri.rsplit("@", 1)[1] if "@" in self.model_uri else "production"
        if self.challenger_alias and self.challenger_alias == production:
            raise ValueError(
                f"CHALLENGER_ALIAS={self.challenger_alias!r} is the production alias of MODEL_URI; "
                "name another alias (default: challenger)"
            )
        if not self.challenger_alias and (self.canary_percent or self.shadow_percent):
            raise ValueError(
                "CANARY_PERCENT and SHADOW_PERCENT need CHALLENGER_ALIAS (the version to send to)"
            )
        self.rollout_key_header = self.rollout_key_header.lower()
        return self

    def api_tokens(self) -> tuple[bytes, ...]:
        """Every accepted bearer token; none means auth is off."""
        tokens = [self.api_token.get_secret_value()] if self.api_token else []
        if self.api_token_file is not None:
            lines = self.api_token_file.read_text().splitlines()
            tokens += [line.strip() for line in lines if not line.lstrip().startswith("#")]
        return tuple(token.encode() for token in tokens if token.strip())

    def registry_client(self) -> RegistryClient:
        """The registry client these settings describe; no retries inside it, because a failed
        call falls back to the verified cache and the loaders retry with their own backoff."""
        token, password = self.mlflow_tracking_token, self.mlflow_tracking_password
        return RegistryClient(
            tracking_uri=self.mlflow_tracking_uri,
            timeout_s=self.registry_timeout_s,
            max_retries=0,
            token=token.get_secret_value() if token else None,
            username=self.mlflow_tracking_username,
            password=password.get_secret_value() if password else None,
        )

    def intra_op_threads(self) -> int:
        return self.onnx_intra_op_threads or available_cores()


def settings_problems(error: Any) -> str:
    """A pydantic ValidationError of settings as one line naming each environment variable."""
    parts = []
    for problem in error.errors():
        where = "_".join(str(part) for part in problem.get("loc", ())).upper()
        message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
