"""Fixtures of the Open Inference Protocol's transport tests.

A test module imports the ``*_fixture`` functions it uses (pytest finds them by their
``name``, so the test's parameter does not shadow the import).

``v2_http`` is the gateway's app with ``/v1`` and ``/v2`` under TestClient; ``v2_grpc`` the
OIP gRPC methods on a grpc.aio server. ``served_v2`` and ``served_v2_broken`` serve the
same app with uvicorn and the gRPC methods with grpc.aio, on free ports in background
threads, for the real clients (tritonclient, kserve) that run as subprocesses from
``.venv-clients``. "Broken" adds a model whose replicas are gone: readiness false.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.errors import NotReady
from deployments.pipeline.service import SegmentationService
from deployments.protocols import http
from deployments.protocols import segserve_pb2_grpc as segserve_grpc
from deployments.protocols.grpc import SegServeGrpc
from deployments.protocols.oip import http as oip_http
from deployments.protocols.oip import open_inference_grpc_pb2_grpc as oip_grpc
from deployments.protocols.oip.grpc import OipGrpc
from deployments.protocols.wire import SegmentResult
from tests.transport.conftest import (
    MAX_REQUEST_BYTES,
    FailingEndpoint,
    gateway_config,
    model_config,
)
from tests.transport.live_server import serve_grpc_methods, serve_http

REPO = Path(__file__).resolve().parents[2]
CLIENTS_DIR = REPO / "tests" / "oip_clients"
CLIENTS_PYTHON = REPO / ".venv-clients" / "bin" / "python"
NOT_READY_MODEL = "gone"


def v2_app(service: SegmentationService) -> FastAPI:
    """The gateway's HTTP app with both protocols, as ``deployments.gateway`` builds it."""
    return http.build_app(service, (http.register, oip_http.register))


def v2_service(cores: dict[str, ModelCore], *, broken: bool = False) -> SegmentationService:
    """``tiny`` and ``tiny-random``; with ``broken``, also ``gone`` (replicas gone)."""
    endpoints: dict[str, Any] = {name: LocalEndpoint(core) for name, core in cores.items()}
    configs = [c.config for c in cores.values()]
    if broken:
        gone = NotReady("no model replica is available right now; retry")
        endpoints[NOT_READY_MODEL] = FailingEndpoint(endpoints["tiny"], gone)
        configs.append(model_config(NOT_READY_MODEL, Path(cores["tiny"].config.source)))
    return SegmentationService(endpoints, configs, gateway_config())


class LocalGrpc(SegServeGrpc, OipGrpc):
    """Both gRPC services over one service, as the gateway has them."""

    def __init__(self, service: SegmentationService) -> None:
        self.service = service


def grpc_server(service: SegmentationService) -> contextlib.AbstractContextManager[str]:
    """segserve.v1 and the OIP methods on one in-process grpc.aio server; host:port."""
    return serve_grpc_methods(
        LocalGrpc(service),
        [
            segserve_grpc.add_SegmentationServicer_to_server,
            oip_grpc.add_GRPCInferenceServiceServicer_to_server,
        ],
        4 * MAX_REQUEST_BYTES,
        service.status.aclose,
    )


@contextlib.contextmanager
def http_server(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn on a free port in a background thread; yields host:port."""
    with serve_http(app) as url:
        yield url.removeprefix("http://")


@dataclass(frozen=True)
class Served:
    """A served app: HTTP ``host:port`` and the gRPC target (both protocols on each)."""

    http: str
    grpc: str


@contextlib.contextmanager
def served(cores: dict[str, ModelCore], *, broken: bool = False) -> Iterator[Served]:
    # One service per event loop: a LocalEndpoint's lock belongs to the loop that used it.
    with (
        http_server(v2_app(v2_service(cores, broken=broken))) as http_target,
        grpc_server(v2_service(cores, broken=broken)) as grpc_target,
    ):
        yield Served(http_target, grpc_target)


@pytest.fixture(scope="session", name="v2_http")
def v2_http_fixture(cores: dict[str, ModelCore]) -> Iterator[TestClient]:
    with TestClient(v2_app(v2_service(cores)), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session", name="v2_http_broken")
def v2_http_broken_fixture(cores: dict[str, ModelCore]) -> Iterator[TestClient]:
    app = v2_app(v2_service(cores, broken=True))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session", name="v2_grpc")
def v2_grpc_fixture(cores: dict[str, ModelCore]) -> Iterator[str]:
    with grpc_server(v2_service(cores, broken=True)) as target:
        yield target


@pytest.fixture(scope="session", name="served_v2")
def served_v2_fixture(cores: dict[str, ModelCore]) -> Iterator[Served]:
    with served(cores) as targets:
        yield targets


@pytest.fixture(scope="session", name="served_v2_broken")
def served_v2_broken_fixture(cores: dict[str, ModelCore]) -> Iterator[Served]:
    with served(cores, broken=True) as targets:
        yield targets


def v1_labels(client: TestClient, data: bytes, model: str = "tiny", **params: str) -> np.ndarray:
    response = client.post(
        "/v1/segment",
        params={"model": model, **params},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    labels = SegmentResult.from_json(response.json()).labels
    assert labels is not None
    return labels


# --- the real clients, in their own virtualenv -----------------------------------------


def clients_python() -> Path:
    """``.venv-clients``' python (``make test`` builds it first); skip, saying why, without."""
    if not (CLIENTS_PYTHON.exists() and (REPO / ".venv-clients" / ".installed").exists()):
        pytest.skip(
            "the real v2 clients need .venv-clients (tritonclient, kserve): run "
            "`make clients-venv`, which needs the package index"
        )
    return CLIENTS_PYTHON


def run_client(
    script: str,
    target: str,
    out: Path,
    *,
    image: Path,
    image2: Path | None = None,
    **flags: str | bool,
) -> dict[str, Any]:
    """Run one client family's script; its JSON report's cases by name."""
    command = [
        str(clients_python()),
        str(CLIENTS_DIR / script),
        "--url",
        target,
        "--image",
        str(image),
        "--out",
        str(out),
    ]
    if image2 is not None:
        command += ["--image2", str(image2)]
    for flag, value in flags.items():
        option = f"--{flag.replace('_', '-')}"
        command += [option] if value is True else [option, str(value)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    cases: dict[str, Any] = report["cases"]
    return cases
