"""Services, servers and clients for the hardening tests (hostile uploads, abuse, API keys).

The services run over the same tiny model cores as conftest.py, with the default
decode limits (100 MP, the structural bounds) and the decode pool of the config.
Besides the in-process TestClient and grpc.aio server, :func:`serve_http` runs the
app on a real socket (uvicorn in a thread) for what only a socket shows: a body that
never arrives, headers judged before the body.

Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc.aio
import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from deployments.config import AuthConfig, GatewayConfig, LimitsConfig, StatusConfig
from deployments.contract import ModelEndpoint
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.service import SegmentationService
from deployments.protocols import http
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from deployments.protocols.grpc import LocalSegServeGrpc

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_grpc(service: SegmentationService) -> Iterator[str]:
    """The segserve.v1 methods over ``service`` on a grpc.aio server in a thread."""
    loop = asyncio.new_event_loop()
    port = free_port()
    started = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", 4 * HOSTILE_REQUEST_BYTES)]
        )
        pb_grpc.add_SegmentationServicer_to_server(LocalSegServeGrpc(service), server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        started.set()
        await stop.wait()
        await server.stop(None)
        await service.status.aclose()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(60), "the in-process gRPC server did not start"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@contextmanager
def serve_http(service: SegmentationService) -> Iterator[str]:
    """The HTTP app over ``service`` on a real socket (uvicorn in a thread): its base URL."""
    port = free_port()
    config = uvicorn.Config(
        http.build_app(service), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped while starting"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


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
