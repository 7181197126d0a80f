"""The gRPC API through Ray Serve's own gRPC proxy: same results and errors as HTTP."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any, cast

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from clients.grpc_client import CHANNEL_OPTIONS
from deployments.protocols import segserve_pb2 as pb
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from deployments.protocols.wire import (
    BUDGET_METADATA_KEY,
    ERROR_CODE_METADATA_KEY,
    decode_label_png,
)
from tests.images import jpeg
from tests.integration.conftest import MAX_REQUEST_BYTES, Served
from tests.integration.test_http_api import BAD_INPUTS


@pytest.fixture
def stub(served: Served) -> Iterator[pb_grpc.SegmentationStub]:
    with grpc.insecure_channel(served.grpc_target, options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.SegmentationStub(channel)


def test_same_photo_same_answer_over_http_and_grpc(
    stub: pb_grpc.SegmentationStub, client: httpx.Client
) -> None:
    data = jpeg(333, 222, seed=11)
    over_http = client.post("/v1/segment", content=data).json()
    over_grpc = stub.Segment(pb.SegmentRequest(image=data), timeout=60)
    assert over_grpc.model == over_http["model"] and over_grpc.weights == over_http["weights"]
    assert (over_grpc.size.width, over_grpc.size.height) == (333, 222)
    assert over_grpc.processed.width == over_http["processed"]["width"]
    http_mask = decode_label_png(base64.b64decode(over_http["mask"]["data"]))
    assert np.array_equal(decode_label_png(over_grpc.mask_png), http_mask)
    grpc_classes = [
        {"id": c.id, "name": c.name, "pixels": c.pixels, "fraction": c.fraction}
        for c in over_grpc.classes
    ]
    assert grpc_classes == over_http["classes"]
    assert over_grpc.batch_size >= 1 and over_grpc.timings.total_ms > 0


def grpc_request(data: bytes, params: dict[str, str]) -> pb.SegmentRequest:
    request = pb.SegmentRequest(
        image=data,
        model=params.get("model", ""),
        mask_size=params.get("mask_size", ""),
        outputs=params["outputs"].split(",") if "outputs" in params else [],
    )
    if "budget_ms" in params:
        request.budget_ms = float(params["budget_ms"])
    return request


GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
}
# gRPC has no content type or multipart, and its typed fields cannot hold "soon" or
# "maybe": those HTTP-only cases do not apply (the budget metadata is tested below).
HTTP_ONLY = ("text", "multipart without image", "non-numeric budget", "strict maybe")
GRPC_CASES = [case for case in BAD_INPUTS if case[0] not in HTTP_ONLY]


@pytest.mark.parametrize(
    ("data", "params", "status", "code"),
    [(case[1], case[3], case[4], case[5]) for case in GRPC_CASES],
    ids=[case[0] for case in GRPC_CASES],
)
def test_each_error_has_its_grpc_code_and_the_http_message(
    stub: pb_grpc.SegmentationStub,
    client: httpx.Client,
    data: bytes,
    params: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Segment(grpc_request(data, params), timeout=60)
    error: Any = caught.value  # a grpc.Call as well as an RpcError
    assert error.code() == GRPC_CODES[status]
    trailing = dict(error.trailing_metadata())
    http_error = client.post(
        "/v1/segment", content=data, params=params, headers={"Content-Type": "image/jpeg"}
    ).json()["error"]
    assert trailing[ERROR_CODE_METADATA_KEY] == http_error["code"]
    if code != "payload_too_large":  # HTTP may stop reading early; the numbers differ
        assert error.details() == http_error["message"]
    assert "Traceback" not in error.details()
    # ... and the service still answers.
    assert stub.Segment(pb.SegmentRequest(image=jpeg(64, 64)), timeout=60).classes


def test_a_30_mb_png_goes_through_grpc(stub: pb_grpc.SegmentationStub) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (3200, 3200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    assert 30_000_000 <= len(data) < MAX_REQUEST_BYTES
    response = stub.Segment(pb.SegmentRequest(image=data), timeout=120)
    assert (response.size.width, response.size.height) == (3200, 3200)
    assert decode_label_png(response.mask_png).shape == (3200, 3200)


def test_a_client_deadline_is_the_budget(stub: pb_grpc.SegmentationStub) -> None:
    # The deadline passed as the request's budget: answered, not run, when it is gone.
    with pytest.raises(grpc.RpcError) as caught:
        stub.Segment(
            pb.SegmentRequest(image=jpeg(3000, 2000)),
            timeout=30,
            metadata=[(BUDGET_METADATA_KEY, "1")],
        )
    assert cast(Any, caught.value).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.RpcError) as late:
        stub.Segment(pb.SegmentRequest(image=jpeg(3000, 2000)), timeout=0.001)
    assert cast(Any, late.value).code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_list_models(stub: pb_grpc.SegmentationStub) -> None:
    response = stub.ListModels(pb.ListModelsRequest(), timeout=60)
    assert response.default_model == "tiny"
    models = {m.name: m for m in response.models}
    assert set(models) >= {"tiny", "b0"}  # and mmseg-b0 with the mmseg extra
    assert models["b0"].weights == "random" and models["tiny"].weights == "pretrained"
    assert len(models["tiny"].labels) == 150 and models["tiny"].framework == "hf_segformer"


def test_a_non_numeric_budget_in_metadata_is_invalid(stub: pb_grpc.SegmentationStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Segment(
            pb.SegmentRequest(image=jpeg(64, 64)),
            timeout=30,
            metadata=[(BUDGET_METADATA_KEY, "soon")],
        )
    assert cast(Any, caught.value).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "budget_ms must be a number" in cast(Any, caught.value).details()


def test_budget_routing_over_grpc(stub: pb_grpc.SegmentationStub) -> None:
    loose = stub.Segment(pb.SegmentRequest(image=jpeg(64, 64), budget_ms=120_000), timeout=120)
    assert loose.model == "b0" and loose.budget.chosen_by == "budget"
    assert loose.budget.met and loose.budget.budget_ms == 120_000
    with pytest.raises(grpc.RpcError) as caught:
        stub.Segment(pb.SegmentRequest(image=jpeg(64, 64), budget_ms=1, strict=True), timeout=30)
    assert cast(Any, caught.value).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "strict=true" in cast(Any, caught.value).details()


def test_a_deadline_alone_bounds_the_call_but_keeps_the_default_model(
    stub: pb_grpc.SegmentationStub,
) -> None:
    reply = stub.Segment(
        pb.SegmentRequest(image=jpeg(64, 64)),
        timeout=120,
        metadata=[(BUDGET_METADATA_KEY, "120000")],
    )
    assert reply.model == "tiny" and reply.budget.chosen_by == "default"
    assert reply.budget.budget_ms == 120_000 and reply.budget.met
