"""Services, servers and clients for the hardening tests (hostile uploads, abuse, API keys).

The services run over the same tiny model cores as conftest.py, with the default
decode limits (100 MP, the structural bounds) and the decode pool of the config.
Besides the in-process TestClient and grpc.aio server, :func:`serve_http` runs the
app on a real socket (uvicorn in a thread) for what only a socket shows: a body that
never arrives, headers judged before the body.

Test modules import the fixtures they use from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from deployments.config import AuthConfig, GatewayConfig, LimitsConfig, StatusConfig
from deployments.contract import ModelEndpoint
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.service import SegmentationService
from deployments.protocols import http
from tests.transport import live_server

#: Large enough for every hostile case (the biggest is a few hundred kB).
HOSTILE_REQUEST_BYTES = 8 * 1024 * 1024
KEY = "sk-test-0123456789abcdef"
OTHER_KEY = "sk-test-fedcba9876543210"


def hardened_config(
    formats: frozenset[str] | None = None,
    keys: tuple[str, ...] = (),
    body_timeout_s: float = 30.0,
    **gateway: Any,
) -> GatewayConfig:
    limits: dict[str, Any] = {
        "max_request_bytes": HOSTILE_REQUEST_BYTES,
        "body_timeout_s": body_timeout_s,
        # Generous: a test machine shares its cores; the deadline guards, it is not timed.
        "decode_timeout_s": 60.0,
        "decode_workers": 1,
    }
    if formats is not None:
        limits["formats"] = sorted(formats)
    return GatewayConfig(
        default_model="tiny",
        limits=LimitsConfig(**limits),
        auth=AuthConfig(api_keys=list(keys)),
        **gateway,
    )


def make_service(
    cores: dict[str, ModelCore],
    config: GatewayConfig,
    endpoints: dict[str, ModelEndpoint] | None = None,
) -> SegmentationService:
    chosen = endpoints or {name: LocalEndpoint(core) for name, core in cores.items()}
    configs = [cores[name].config for name in chosen]
    return SegmentationService(chosen, configs, config)


def serve_grpc(service: SegmentationService) -> AbstractContextManager[str]:
    """The segserve.v1 methods over ``service`` on a grpc.aio server in a thread."""
    return live_server.serve_grpc(service, 4 * HOSTILE_REQUEST_BYTES)


def serve_http(service: SegmentationService) -> AbstractContextManager[str]:
    """The HTTP app over ``service`` on a real socket (uvicorn in a thread): its base URL."""
    return live_server.serve_http(http.build_app(service))


@pytest.fixture(scope="session")
def hostile_services(cores: dict[str, ModelCore]) -> dict[frozenset[str] | None, Any]:
    """Services by accepted formats (None: the defaults), built on first use."""

    class Services(dict[frozenset[str] | None, SegmentationService]):
        def __missing__(self, formats: frozenset[str] | None) -> SegmentationService:
            service = make_service(cores, hardened_config(formats))
            self[formats] = service
            return service

    return Services()


@pytest.fixture(scope="session")
def hostile_http(hostile_services: dict[frozenset[str] | None, Any]) -> Iterator[Any]:
    """A TestClient per accepted formats: ``hostile_http[formats]``."""
    clients: dict[frozenset[str] | None, TestClient] = {}

    class Clients(dict[frozenset[str] | None, TestClient]):
        def __missing__(self, formats: frozenset[str] | None) -> TestClient:
            client = TestClient(
                http.build_app(hostile_services[formats]), raise_server_exceptions=False
            )
            client.__enter__()
            clients[formats] = client
            self[formats] = client
            return client

    yield Clients()
    for client in clients.values():
        client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def hostile_grpc(hostile_services: dict[frozenset[str] | None, Any]) -> Iterator[Any]:
    """A gRPC target per accepted formats: ``hostile_grpc[formats]``."""
    stack: list[Any] = []

    class Targets(dict[frozenset[str] | None, str]):
        def __missing__(self, formats: frozenset[str] | None) -> str:
            server = serve_grpc(hostile_services[formats])
            target = server.__enter__()
            stack.append(server)
            self[formats] = target
            return target

    yield Targets()
    for server in reversed(stack):
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def keyed_service(cores: dict[str, ModelCore]) -> SegmentationService:
    return make_service(
        cores,
        hardened_config(keys=(KEY, OTHER_KEY), status=StatusConfig(refresh_s=1.0)),
    )


#: Operations whose 5xx are documented answers, not failures (readiness says 503 when a
#: model is not ready).
DOCUMENTED_5XX = {"GET /readyz": {503}}


def fuzz_operations(schema: Any, examples: int, call: Callable[[Any], Any]) -> dict[str, int]:
    """Schemathesis without its pytest plugin (which does not load under pytest 9): run
    ``call(case)`` (which sends it and returns the response) on generated cases of
    every operation; raise AssertionError naming the case of any 5xx. Returns the number
    of cases sent per operation."""
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        allowed = DOCUMENTED_5XX.get(label, set())
        sent[label] = 0

        _fuzz_one(operation, label, examples, allowed, call, sent)()
    return sent


def _fuzz_one(
    operation: Any,
    label: str,
    examples: int,
    allowed: set[int],
    call: Callable[[Any], Any],
    sent: dict[str, int],
) -> Callable[[], None]:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def check(case: Any) -> None:
        response = call(case)
        sent[label] += 1
        status = int(response.status_code)
        assert status < 500 or status in allowed, (
            f"{label} answered {status} to {case.as_curl_command()}: {response.text[:300]}"
        )

    return check  # type: ignore[no-any-return]


__all__ = [
    "HOSTILE_REQUEST_BYTES",
    "KEY",
    "OTHER_KEY",
    "fuzz_operations",
    "hardened_config",
    "hostile_grpc",
    "hostile_http",
    "hostile_services",
    "keyed_service",
    "make_service",
    "serve_grpc",
    "serve_http",
]
