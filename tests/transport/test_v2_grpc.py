"""``inference.GRPCInferenceService`` in-process (:class:`LocalOipGrpc` methods on grpc.aio):
statuses, raw and typed contents, and answers that are ``/v1``'s label maps."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from deployments.protocols.oip import open_inference_grpc_pb2 as pb
from deployments.protocols.oip import open_inference_grpc_pb2_grpc as pb_grpc
from deployments.protocols.oip.grpc import OipGrpc
from deployments.protocols.wire import ERROR_CODE_METADATA_KEY
from tests.images import encode, jpeg, scene
from tests.transport.v2_fixtures import (  # noqa: F401  (the *_fixture imports)
    NOT_READY_MODEL,
    v1_labels,
    v2_grpc_fixture,
    v2_http_fixture,
)


@pytest.fixture(scope="module")
def stub(v2_grpc: str) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(v2_grpc) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    error: Any = info.value
    trailing = {str(key): str(value) for key, value in error.trailing_metadata() or ()}
    return error.code(), trailing.get(ERROR_CODE_METADATA_KEY, "")


def bytes_request(*items: bytes, model: str = "tiny", raw: bool = True) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="g-1")
    tensor = request.inputs.add(name="image", datatype="BYTES", shape=[len(items)])
    if raw:
        request.raw_input_contents.append(b"".join(len(i).to_bytes(4, "little") + i for i in items))
    else:
        tensor.contents.bytes_contents.extend(items)
    return request


def test_health_and_readiness(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live is True
    assert stub.ServerReady(pb.ServerReadyRequest()).ready is False  # "gone" is down
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny")).ready is True
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny", version="1")).ready is True
    assert stub.ModelReady(pb.ModelReadyRequest(name=NOT_READY_MODEL)).ready is False
    assert status_of(lambda: stub.ModelReady(pb.ModelReadyRequest(name="nope"))) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown_model",
    )
    assert status_of(lambda: stub.ModelReady(pb.ModelReadyRequest(name="tiny", version="2"))) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown_model_version",
    )


def test_metadata(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    server = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "segserve" and "binary_tensor_data" in server.extensions
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny"))
    assert (model.name, list(model.versions)) == ("tiny", ["1"])
    assert [t.name for t in model.outputs] == ["labels", "classes", "mask_png"]


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "bytes_contents"])
def test_infer_answers_every_output_raw_and_v1s_labels(
    stub: pb_grpc.GRPCInferenceServiceStub, v2_http: TestClient, raw: bool
) -> None:
    first, second = jpeg(96, 64, seed=21), jpeg(96, 64, seed=22)
    response = stub.ModelInfer(bytes_request(first, second, raw=raw))
    assert (response.model_name, response.model_version, response.id) == ("tiny", "1", "g-1")
    assert [o.name for o in response.outputs] == ["labels", "classes", "mask_png"]
    assert len(response.raw_output_contents) == 3  # what tritonclient reads
    labels_meta = response.outputs[0]
    assert (labels_meta.datatype, list(labels_meta.shape)) == ("UINT8", [2, 64, 96])
    labels = np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(2, 64, 96)
    np.testing.assert_array_equal(labels[0], v1_labels(v2_http, first))
    np.testing.assert_array_equal(labels[1], v1_labels(v2_http, second))
    assert response.parameters["weights"].string_param == "pretrained"
    assert response.parameters["batch_size"].int64_param >= 1


def test_uint8_typed_contents(stub: pb_grpc.GRPCInferenceServiceStub, v2_http: TestClient) -> None:
    pixels = scene(40, 30, seed=8)
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="image", datatype="UINT8", shape=[1, 30, 40, 3])
    request.inputs[0].contents.uint_contents.extend(pixels.ravel().tolist())
    request.outputs.add(name="labels")
    response = stub.ModelInfer(request)
    labels = np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(30, 40)
    np.testing.assert_array_equal(labels, v1_labels(v2_http, encode(pixels, "PNG")))


def test_parameters_reach_the_service(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = bytes_request(jpeg(32, 32))
    request.parameters["budget_ms"].double_param = 30000.0
    request.parameters["strict"].bool_param = False
    request.parameters["priority"].int64_param = 1
    response = stub.ModelInfer(request)
    assert response.parameters["budget_ms"].int64_param == 30000
    assert response.parameters["budget_met"].bool_param is True


def test_mistakes_are_client_status_codes(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    wrong = pb.ModelInferRequest(model_name="tiny")
    wrong.inputs.add(name="image", datatype="FP32", shape=[1])
    wrong.raw_input_contents.append(b"\0\0\0\0")
    bad_size = bytes_request(jpeg(16, 16))
    bad_size.raw_input_contents[0] = bad_size.raw_input_contents[0][:-1]
    cases = {
        "invalid_datatype": wrong,
        "unsupported_image": bytes_request(b"\xff\xd8\xffnot a jpeg"),
        "invalid_binary_data": bad_size,
        "unknown_model": bytes_request(jpeg(16, 16), model="nope"),
    }
    for code, request in cases.items():
        expected = grpc.StatusCode.NOT_FOUND if code == "unknown_model" else None
        status, got = status_of(lambda r=request: stub.ModelInfer(r))
        assert got == code
        assert status == (expected or grpc.StatusCode.INVALID_ARGUMENT)
    status, code = status_of(lambda: stub.ModelInfer(bytes_request(jpeg(8, 8), model="gone")))
    assert (status, code) == (grpc.StatusCode.UNAVAILABLE, "not_ready")


@pytest.mark.parametrize(
    "method",
    ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"],
)
def test_ray_serve_can_hand_each_method_its_context(method: str) -> None:
    """Ray Serve's replica passes the call context only as the keyword ``grpc_context``
    (``ray.serve._private.constants.GRPC_CONTEXT_ARG_NAME``), when the method's signature
    has it; otherwise it calls the method with the request alone (and the call fails)."""
    assert "grpc_context" in inspect.signature(getattr(OipGrpc, method)).parameters
