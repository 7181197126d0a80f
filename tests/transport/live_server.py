"""The gateway's HTTP app (and gRPC methods) on real sockets in this process, for clients
that must connect (a browser, ``segserve bench``): uvicorn and grpc.aio in background
threads, over the real service and tiny model cores, no Ray."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc.aio
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from deployments.adapters.device import plan_device
from deployments.config import GatewayConfig, LimitsConfig, ModelConfig
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.service import SegmentationService
from deployments.protocols import demo, http
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from deployments.protocols.grpc import LocalSegServeGrpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_cores(tiny_dir: Path) -> dict[str, ModelCore]:
    """``tiny`` (pretrained: its checkpoint from disk) and ``tiny-random`` (random weights)."""
    device = plan_device(0, 1, None)
    configs = [
        ModelConfig(name="tiny", framework="hf_segformer", source=str(tiny_dir), quality=10.0),
        ModelConfig(
            name="tiny-random", framework="hf_segformer", source=str(tiny_dir), weights="random"
        ),
    ]
    return {c.name: ModelCore(c, device) for c in configs}


MAX_REQUEST_BYTES = 8 * 1024 * 1024


def service_over(cores: dict[str, ModelCore], default: str = "tiny") -> SegmentationService:
    limits = LimitsConfig(max_request_bytes=MAX_REQUEST_BYTES, max_image_pixels=4000 * 3000)
    return SegmentationService(
        {name: LocalEndpoint(core) for name, core in cores.items()},
        [core.config for core in cores.values()],
        GatewayConfig(default_model=default, limits=limits),
    )


def demo_app(service: SegmentationService) -> FastAPI:
    """The gateway's HTTP protocols: ``/v1`` and the try-it page."""
    return http.build_app(service, (http.register, demo.register))


@contextlib.contextmanager
def serve_http(app: ASGIApp) -> Iterator[str]:
    """An ASGI app on a free port (uvicorn in a thread); the base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "uvicorn exited while starting"
        assert time.monotonic() < deadline, "uvicorn did not start in 60 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


GrpcAdder = Callable[[Any, grpc.aio.Server], None]


@contextlib.contextmanager
def serve_grpc_methods(
    methods: Any,
    adders: Sequence[GrpcAdder],
    max_message_bytes: int = 64 << 20,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> Iterator[str]:
    """``methods`` (a servicer object) on a grpc.aio server in a background event loop, for
    each generated ``add_*Servicer_to_server`` in ``adders``; yields host:port.
    ``on_stop`` runs in that loop after the server stops (a service's status refresh)."""
    loop = asyncio.new_event_loop()
    port = free_port()
    started = threading.Event()
    stop = asyncio.Event()

    async def run() -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", 256 << 20),
            ]
        )
        for add in adders:
            add(methods, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        started.set()
        await stop.wait()
        await server.stop(None)
        if on_stop is not None:
            await on_stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(60), "the in-process gRPC server did not start"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def serve_grpc(
    service: SegmentationService, max_message_bytes: int = 64 << 20
) -> contextlib.AbstractContextManager[str]:
    """The segserve.v1 methods over ``service``; host:port."""
    return serve_grpc_methods(
        LocalSegServeGrpc(service),
        [pb_grpc.add_SegmentationServicer_to_server],
        max_message_bytes,
        service.status.aclose,
    )
