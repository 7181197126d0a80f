"""The Python clients (HTTP and gRPC, sync and async) against the real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from clients.grpc_client import AsyncGrpcSegServeClient, GrpcSegServeClient
from clients.http import AsyncSegServeClient, SegServeClient
from clients.result import SegmentationResult, SegServeClientError
from tests.images import jpeg
from tests.integration.conftest import Served, free_port

PHOTO = jpeg(250, 190, seed=21)


def sync_results(served: Served) -> list[SegmentationResult]:
    with SegServeClient(served.url) as http, GrpcSegServeClient(served.grpc_target) as rpc:
        return [http.segment(PHOTO), rpc.segment(PHOTO)]


async def async_results(served: Served) -> list[SegmentationResult]:
    async with (
        AsyncSegServeClient(served.url) as http,
        AsyncGrpcSegServeClient(served.grpc_target) as rpc,
    ):
        return list(await asyncio.gather(http.segment(PHOTO), rpc.segment(PHOTO)))


def test_all_four_clients_return_the_same_result(served: Served) -> None:
    results = sync_results(served) + asyncio.run(async_results(served))
    first = results[0]
    assert first.model == "tiny" and first.weights == "pretrained"
    assert (first.width, first.height) == (250, 190)
    assert first.labels is not None and first.labels.shape == (190, 250)
    assert first.classes and first.classes[0].fraction >= first.classes[-1].fraction
    for other in results[1:]:
        assert other.labels is not None and np.array_equal(other.labels, first.labels)
        assert other.classes == first.classes and other.model == first.model
        assert set(other.timings.to_dict()) == {"decode", "queue", "inference", "encode", "total"}


def test_options_pass_through(served: Served, tmp_path: Path) -> None:
    with SegServeClient(served.url) as http, GrpcSegServeClient(served.grpc_target) as rpc:
        for client in (http, rpc):
            result = client.segment(PHOTO, model="b0", outputs=["classes"])
            assert result.model == "b0" and result.weights == "random" and result.warning
            assert result.mask_png is None and result.labels is None and result.classes
            small = client.segment(jpeg(2000, 1000), mask_size="model")
            assert small.labels is not None and small.labels.size <= 512 * 512
            path = client.segment(PHOTO).save_mask(tmp_path / "labels.png")
            assert path.stat().st_size > 0


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_errors_raise_one_exception_type_with_the_code(served: Served, transport: str) -> None:
    client: SegServeClient | GrpcSegServeClient = (
        SegServeClient(served.url)
        if transport == "http"
        else GrpcSegServeClient(served.grpc_target)
    )
    with client:
        with pytest.raises(SegServeClientError) as unknown:
            client.segment(PHOTO, model="nope")
        assert unknown.value.code == "unknown_model"
        assert unknown.value.status == (404 if transport == "http" else "NOT_FOUND")
        with pytest.raises(SegServeClientError) as bad:
            client.segment(b"definitely not an image")
        assert bad.value.code == "unsupported_image" and "accepted format" in bad.value.message
        listing = client.models()
        assert listing["default"] == "tiny" and len(listing["models"]) >= 2


def test_unreachable_servers_are_reported_as_such() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(SegServeClientError) as http_error:
        SegServeClient(f"http://127.0.0.1:{port}", timeout=5).segment(PHOTO)
    assert http_error.value.code == "unreachable"
    with pytest.raises(SegServeClientError) as grpc_error:
        GrpcSegServeClient(f"127.0.0.1:{port}", timeout=5).segment(PHOTO)
    assert grpc_error.value.code == "unreachable"
