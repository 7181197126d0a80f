"""The transports in-process: the gateway's FastAPI app and gRPC methods over the real
service and a real (tiny, random-weights) model core, with no Ray. Seconds, not minutes.

``healthy`` serves two models: ``tiny`` (its checkpoint loaded from disk) and
``tiny-random`` (``weights: random``). ``broken`` adds models whose replicas are
gone or fail, as the gateway sees them through Ray: what only a dead cluster gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deployments.adapters.device import plan_device
from deployments.config import GatewayConfig, LimitsConfig, ModelConfig
from deployments.contract import ModelCard, Prediction, PredictRequest
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.errors import NotReady, Overloaded
from deployments.pipeline.service import SegmentationService
from deployments.protocols import http
from tests.transport.live_server import serve_grpc

MAX_REQUEST_BYTES = 2 * 1024 * 1024
MAX_IMAGE_PIXELS = 4000 * 3000


class FailingEndpoint:
    """A model whose replicas are gone (``NotReady``), full (``Overloaded``) or buggy
    (anything else), as a Ray deployment handle reports them to the gateway."""

    def __init__(self, healthy: LocalEndpoint, error: Exception) -> None:
        self.healthy = healthy
        self.error = error

    async def card(self) -> ModelCard:
        return await self.healthy.card()

    async def predict(self, request: PredictRequest) -> Prediction:
        raise self.error

    async def describe(self) -> dict[str, Any]:
        raise self.error

    async def ready(self) -> bool:
        raise self.error


def model_config(name: str, source: Path, **extra: Any) -> ModelConfig:
    return ModelConfig(name=name, framework="hf_segformer", source=str(source), **extra)


def gateway_config(default: str = "tiny") -> GatewayConfig:
    limits = LimitsConfig(max_request_bytes=MAX_REQUEST_BYTES, max_image_pixels=MAX_IMAGE_PIXELS)
    return GatewayConfig(default_model=default, limits=limits)


@pytest.fixture(scope="session")
def cores(tiny_segformer_dir: Path) -> dict[str, ModelCore]:
    device = plan_device(0, 1, None)
    return {
        "tiny": ModelCore(model_config("tiny", tiny_segformer_dir, quality=10.0), device),
        "tiny-random": ModelCore(
            model_config("tiny-random", tiny_segformer_dir, weights="random"), device
        ),
    }


def healthy_service(cores: dict[str, ModelCore]) -> SegmentationService:
    endpoints = {name: LocalEndpoint(core) for name, core in cores.items()}
    return SegmentationService(endpoints, [c.config for c in cores.values()], gateway_config())


def broken_service(cores: dict[str, ModelCore]) -> SegmentationService:
    tiny = LocalEndpoint(cores["tiny"])
    source = Path(cores["tiny"].config.source)
    failing = {
        "gone": NotReady("no model replica is available right now; retry"),
        "full": Overloaded("the model's queue is full; retry later"),
        "buggy": RuntimeError("KeyError at /srv/segserve/secret.py line 3"),
    }
    endpoints: dict[str, Any] = {"tiny": tiny}
    endpoints.update({name: FailingEndpoint(tiny, error) for name, error in failing.items()})
    configs = [cores["tiny"].config, *(model_config(n, source) for n in failing)]
    return SegmentationService(endpoints, configs, gateway_config())


@pytest.fixture(scope="session")
def http_client(cores: dict[str, ModelCore]) -> Iterator[TestClient]:
    with TestClient(http.build_app(healthy_service(cores)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def broken_http(cores: dict[str, ModelCore]) -> Iterator[TestClient]:
    with TestClient(http.build_app(broken_service(cores)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def grpc_target(cores: dict[str, ModelCore]) -> Iterator[str]:
    """The segserve.v1 methods on a plain grpc.aio server in a background event loop."""
    with serve_grpc(broken_service(cores), 4 * MAX_REQUEST_BYTES) as target:
        yield target
