"""The drawn outputs over gRPC: the same contours, RLE and overlay as HTTP, and the same errors.

The gRPC server of ``conftest.grpc_target`` serves the tiny model as its default;
HTTP answers for the same photo are the reference (one service, two transports).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clients.grpc_client import AsyncGrpcSegServeClient, GrpcSegServeClient
from clients.result import DrawOptions, SegServeClientError
from deployments.model_core import ModelCore
from deployments.protocols import segserve_pb2 as pb
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from deployments.protocols.wire import SegmentResult
from tests.images import encode, scene
from tests.transport.outputs_fixtures import outputs_app, tiny_service

PHOTO_PNG = encode(scene(80, 60, seed=5), "PNG")
OUTPUTS = ["classes", "mask", "contours", "rle", "overlay"]


@pytest.fixture(scope="module")
def http_reference(cores: dict[str, ModelCore]) -> Iterator[TestClient]:
    with TestClient(outputs_app(tiny_service(cores)), raise_server_exceptions=False) as c:
        yield c


def over_http(client: TestClient, **params: str) -> SegmentResult:
    response = client.post(
        "/v1/segment",
        content=PHOTO_PNG,
        headers={"Content-Type": "image/png"},
        params={"outputs": ",".join(OUTPUTS), **params},
    )
    assert response.status_code == 200, response.text
    return SegmentResult.from_json(response.json())


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def test_grpc_outputs_equal_the_http_ones(grpc_target: str, http_reference: TestClient) -> None:
    draw = DrawOptions(simplify=1.5, max_classes=3, alpha=0.25, overlay_format="png", legend=True)
    with GrpcSegServeClient(grpc_target) as client:
        result = client.segment(PHOTO_PNG, outputs=OUTPUTS, mask_size="model", draw=draw)
    reference = over_http(
        http_reference,
        mask_size="model",
        simplify="1.5",
        max_classes="3",
        alpha="0.25",
        overlay_format="png",
        legend="true",
    )
    assert result.contours is not None and len(result.contours) == 3
    assert result.contours == reference.contours
    assert result.rle == reference.rle and result.rle
    assert result.overlay is not None and reference.overlay is not None
    assert (result.overlay.format, result.overlay.width, result.overlay.height) == ("png", 80, 60)
    assert np.array_equal(pixels(result.overlay.data), pixels(reference.overlay.data))
    assert set(result.timings.encode_by_output) >= {"contours", "rle", "overlay"}


def test_an_empty_contour_list_is_not_a_missing_one(grpc_target: str) -> None:
    with GrpcSegServeClient(grpc_target) as client:
        # min_area 1: no contour encloses the whole image (contours run through pixel centres).
        asked = client.segment(PHOTO_PNG, outputs=["contours"], draw=DrawOptions(min_area=1.0))
        not_asked = client.segment(PHOTO_PNG, outputs=["classes"])
    assert asked.contours == []
    assert not_asked.contours is None and not_asked.rle is None and not_asked.overlay is None


def test_the_async_client_sends_the_options(grpc_target: str) -> None:
    import asyncio

    async def run() -> SegmentResult:
        async with AsyncGrpcSegServeClient(grpc_target) as client:
            return await client.segment(
                PHOTO_PNG, outputs=["overlay"], draw=DrawOptions(overlay_format="jpeg", alpha=0.0)
            )

    result = asyncio.run(run())
    assert result.overlay is not None and result.overlay.format == "jpeg"
    assert result.overlay.data[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"outputs": ["contours", "polygons"]}, "'polygons'"),
        ({"outputs": ["overlay"], "alpha": 2.0}, "alpha must be between 0 and 1"),
        ({"outputs": ["contours"], "max_classes": 0}, "max_classes must be between 1"),
        ({"outputs": ["overlay"], "overlay_format": "bmp"}, "overlay_format must be one of"),
    ],
)
def test_bad_outputs_and_options_are_invalid_argument(
    grpc_target: str, fields: dict[str, object], fragment: str
) -> None:
    request = pb.SegmentRequest(image=PHOTO_PNG, **fields)  # type: ignore[arg-type]
    with grpc.insecure_channel(grpc_target) as channel:
        stub = pb_grpc.SegmentationStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as raised:
            stub.Segment(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (raised.value.details() or "")
    with GrpcSegServeClient(grpc_target) as client, pytest.raises(SegServeClientError) as caught:
        client.segment(PHOTO_PNG, outputs=["overlay"], draw=DrawOptions(alpha=-1.0))
    assert caught.value.code == "invalid_parameter"
