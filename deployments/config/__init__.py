"""Typed configuration: the ``args`` of the application in serve_config.yaml.

Every model is strict (``extra="forbid"``): a misspelt key is an error that
names the key's full path, e.g. ``models.0.batching.max_batch_sise``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from deployments.config.base import ConfigError, CpuAffinity, StrictModel, valid_model_name
from deployments.config.gateway import (
    AdmissionConfig,
    AuthConfig,
    ImageContractConfig,
    OutputsConfig,
    RoutingConfig,
    StatusConfig,
)
from deployments.config.limits import (
    GRPC_MESSAGE_OVERHEAD,
    RAY_GRPC_MESSAGE_SIZE_ENV,
    LimitsConfig,
    ray_grpc_environment,
)
from deployments.config.models import (
    AutoscalingConfig,
    BatchingConfig,
    ModelConfig,
    _replicas_or_autoscaling,
    replica_options,
)

__all__ = [
    "GRPC_MESSAGE_OVERHEAD",
    "RAY_GRPC_MESSAGE_SIZE_ENV",
    "AdmissionConfig",
    "AppArgs",
    "AuthConfig",
    "AutoscalingConfig",
    "BatchingConfig",
    "ConfigError",
    "CpuAffinity",
    "GatewayConfig",
    "ImageContractConfig",
    "LimitsConfig",
    "ModelConfig",
    "OutputsConfig",
    "RoutingConfig",
    "StatusConfig",
    "StrictModel",
    "deployment_name",
    "format_validation_error",
    "load_serve_config",
    "parse_args",
    "ray_grpc_environment",
    "replica_options",
    "valid_model_name",
]


class GatewayConfig(StrictModel):
    default_model: str | None = None
    """Model used for ``model=auto``; by default the first model listed."""

    limits: LimitsConfig = LimitsConfig()
    """Size limits for uploads."""

    png_compress_level: int = Field(default=1, ge=0, le=9)
    """zlib level of the label PNG (1 is fast and label maps compress well)."""

    routing: RoutingConfig = RoutingConfig()
    """Latency-budget routing (``model=auto&budget_ms=...``)."""

    admission: AdmissionConfig = AdmissionConfig()
    """Admission control: 503 ``overloaded`` at once, before the upload is read or decoded,
    for a model whose replicas are full."""

    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.5, ge=0)
    """CPUs reserved per gateway replica (decode, resize and encode run here)."""

    cpu_affinity: CpuAffinity | None = None
    """CPU ids each gateway replica (and its decode workers, started after) pins itself to
    at start, as ``models[].cpu_affinity`` does; by default unpinned (the gateway floats
    over the cores the models leave free)."""

    max_ongoing_requests: int = Field(default=64, ge=1)

    max_queued_requests: int = Field(default=128, ge=-1)
    """Requests waiting for a gateway replica before Ray's proxy answers 503 (gRPC
    RESOURCE_EXHAUSTED) itself; -1 is unbounded (not advised on a public endpoint: waiting
    requests hold their bodies in the proxy)."""

    autoscaling_config: AutoscalingConfig | None = None
    """Scale gateway replicas (CPU: decode, resize, encode) with load, on their own
    settings, instead of ``num_replicas``."""

    auth: AuthConfig = AuthConfig()
    """API keys (every route but /healthz needs one when any is configured)."""

    status: StatusConfig = StatusConfig()
    """Background refresh of model readiness and descriptions (/readyz, /v1/models)."""

    outputs: OutputsConfig = OutputsConfig()
    """Defaults of the contours, RLE and overlay outputs."""

    image: ImageContractConfig = ImageContractConfig()
    """The IMAGE preprocessor contract (``POST /preprocessor``)."""

    @model_validator(mode="after")
    def _scaling(self) -> GatewayConfig:
        _replicas_or_autoscaling(self.num_replicas, self.autoscaling_config)
        return self


class AppArgs(StrictModel):
    """The ``args`` of the segserve application in serve_config.yaml."""

    models: list[ModelConfig] = Field(min_length=1)
    gateway: GatewayConfig = GatewayConfig()

    @model_validator(mode="after")
    def _consistent(self) -> AppArgs:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        default = self.gateway.default_model
        if default is not None and default not in names:
            raise ValueError(
                f"gateway.default_model {default!r} is not a configured model ({', '.join(names)})"
            )
        return self

    @property
    def default_model(self) -> str:
        return self.gateway.default_model or self.models[0].name


def deployment_name(model: str) -> str:
    """The Ray Serve deployment that serves a model."""
    return f"model_{model}"


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{path}: {item['msg']}")
    return "invalid segserve config:\n  " + "\n  ".join(lines)


def parse_args(args: dict[str, Any]) -> AppArgs:
    """Validate an application's ``args`` dict, with key paths in the error."""
    try:
        return AppArgs.model_validate(args)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def load_serve_config(path: str | Path, app_name: str | None = None) -> AppArgs:
    """Read serve_config.yaml and validate the segserve application's args."""
    document = yaml.safe_load(Path(path).read_text())
    apps = document.get("applications") or []
    for app in apps:
        if app_name is None or app.get("name") == app_name:
            return parse_args(app.get("args") or {})
    raise ConfigError(f"no application {app_name!r} in {path}")
