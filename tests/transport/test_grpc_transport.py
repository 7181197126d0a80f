"""The segserve.v1 gRPC methods in-process, through the real gRPC clients."""

from __future__ import annotations

import inspect
from typing import Any

import grpc
import pytest

from clients.grpc_client import GrpcSegServeClient
from clients.result import SegServeClientError
from deployments.protocols import segserve_pb2 as pb
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from deployments.protocols.grpc import SegServeGrpc
from deployments.protocols.wire import BUDGET_METADATA_KEY, ERROR_CODE_METADATA_KEY
from tests.images import jpeg, png_bomb
from tests.transport.conftest import MAX_REQUEST_BYTES


def test_segment_and_list_models(grpc_target: str) -> None:
    with GrpcSegServeClient(grpc_target) as client:
        result = client.segment(jpeg(80, 60), outputs=["classes", "mask"])
        assert (result.model, result.width, result.height) == ("tiny", 80, 60)
        assert result.labels is not None and result.labels.shape == (60, 80)
        assert result.classes and sum(c.pixels for c in result.classes) == 80 * 60
        assert result.budget.chosen_by == "default"
        models = client.models()
    assert models["default"] == "tiny"
    assert {m["name"] for m in models["models"]} == {"tiny", "gone", "full", "buggy"}


def test_the_call_deadline_is_the_budget_but_does_not_choose(grpc_target: str) -> None:
    with GrpcSegServeClient(grpc_target) as client:
        result = client.segment(jpeg(40, 40), timeout=30)
    assert result.budget.budget_ms == 30_000 and result.budget.chosen_by == "default"


def call(
    target: str, request: pb.SegmentRequest, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.RpcError:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SegmentationStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as raised:
            stub.Segment(request, timeout=60, metadata=metadata)
    return raised.value


@pytest.mark.parametrize(
    ("request_", "status", "code"),
    [
        (pb.SegmentRequest(image=jpeg(8, 8), model="b7"), "NOT_FOUND", "unknown_model"),
        (pb.SegmentRequest(image=b"hello"), "INVALID_ARGUMENT", "unsupported_image"),
        (pb.SegmentRequest(image=jpeg(64, 64)[:100]), "INVALID_ARGUMENT", "corrupt_image"),
        (pb.SegmentRequest(image=png_bomb(5000, 5000)), "RESOURCE_EXHAUSTED", "image_too_large"),
        (
            pb.SegmentRequest(image=b"\xff" * (MAX_REQUEST_BYTES + 1)),
            "RESOURCE_EXHAUSTED",
            "payload_too_large",
        ),
        (
            pb.SegmentRequest(image=jpeg(8, 8), outputs=["poem"]),
            "INVALID_ARGUMENT",
            "invalid_parameter",
        ),
        (
            pb.SegmentRequest(image=jpeg(8, 8), budget_ms=1, strict=True),
            "DEADLINE_EXCEEDED",
            "budget_unreachable",
        ),
        (pb.SegmentRequest(image=jpeg(8, 8), model="gone"), "UNAVAILABLE", "not_ready"),
        (pb.SegmentRequest(image=jpeg(8, 8), model="full"), "RESOURCE_EXHAUSTED", "overloaded"),
        (pb.SegmentRequest(image=jpeg(8, 8), model="buggy"), "INTERNAL", "internal"),
    ],
)
def test_errors_are_status_codes_with_the_service_code(
    grpc_target: str, request_: pb.SegmentRequest, status: str, code: str
) -> None:
    error = call(grpc_target, request_)
    assert error.code().name == status  # type: ignore[attr-defined]
    pairs: Any = error.trailing_metadata()  # type: ignore[attr-defined]
    trailing = {str(key): value for key, value in pairs}
    assert trailing[ERROR_CODE_METADATA_KEY] == code
    if code == "internal":
        assert "/srv" not in str(error.details())  # type: ignore[attr-defined]


def test_a_malformed_budget_in_metadata_is_invalid(grpc_target: str) -> None:
    error = call(grpc_target, pb.SegmentRequest(image=jpeg(8, 8)), ((BUDGET_METADATA_KEY, "x"),))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_the_client_raises_the_service_code(grpc_target: str) -> None:
    with GrpcSegServeClient(grpc_target) as client, pytest.raises(SegServeClientError) as raised:
        client.segment(jpeg(8, 8), model="b7")
    assert (raised.value.code, raised.value.status) == ("unknown_model", "NOT_FOUND")


def test_every_method_takes_the_context_by_the_name_ray_passes() -> None:
    """Ray Serve's gRPC proxy hands the call context only to a parameter named
    ``grpc_context``; a method without one fails on every call through Ray."""
    methods = [getattr(SegServeGrpc, name) for name in ("Segment", "ListModels")]
    for method in methods:
        assert "grpc_context" in inspect.signature(method).parameters, method.__name__
