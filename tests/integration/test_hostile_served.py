"""Hostile uploads against a real Ray Serve, over HTTP and Ray's gRPC proxy: the
documented status and code, decoded in the gateway's worker processes, and the service
answers a good request afterwards."""

from __future__ import annotations

import grpc
import httpx
import pytest

from clients.grpc_client import GrpcSegServeClient
from clients.result import SegServeClientError
from tests.hostile_images import CASES, HostileCase
from tests.images import jpeg
from tests.integration.conftest import Served

#: One of each kind of refusal and one success: the transport tier runs every class.
NAMES = (
    "progressive_scan_bomb",
    "png_many_empty_chunks",
    "tiff_huge_tile",
    "png_broken_iccp_after_idat",
    "png_dimension_bomb",
    "heic_header",
    "many_frame_apng",
)
SERVED_CASES = [c for c in CASES if c.name in NAMES]


@pytest.mark.parametrize("case", SERVED_CASES, ids=lambda c: c.name)
def test_hostile_upload_over_http_and_grpc(served: Served, case: HostileCase) -> None:
    data = case.make()
    with httpx.Client(base_url=served.url, timeout=120) as client:
        response = client.post(
            "/v1/segment", content=data, headers={"Content-Type": "application/octet-stream"}
        )
        assert response.status_code == case.status, response.text[:300]
        if case.code is not None:
            assert response.json()["error"]["code"] == case.code
        assert client.post("/v1/segment", content=jpeg(32, 32)).status_code == 200
    with GrpcSegServeClient(served.grpc_target, timeout=120) as grpc_client:
        if case.code is None:
            assert case.size is not None
            assert grpc_client.segment(data).width == case.size[0]
        else:
            with pytest.raises(SegServeClientError) as raised:
                grpc_client.segment(data)
            assert raised.value.code == case.code
        assert grpc_client.segment(jpeg(32, 32)).width == 32


def test_grpc_messages_above_the_limit_stop_at_the_proxy(served: Served) -> None:
    """Ray's proxy was started with the request limit: a message far above it is refused
    before it reaches the gateway (no segserve error code: the proxy answered)."""
    limit = served.args.gateway.limits.grpc_max_message_bytes()
    with (
        GrpcSegServeClient(served.grpc_target, timeout=120) as client,
        pytest.raises(SegServeClientError) as raised,
    ):
        client.segment(b"\xff" * (limit + 1024))
    assert raised.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED.name
