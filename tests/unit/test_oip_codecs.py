"""The OIP tensor codecs: REST JSON, Triton's binary extension, gRPC messages, validation."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from typing import Any

import numpy as np
import pytest

from deployments.pipeline.errors import ErrorKind, SegServeError
from deployments.protocols.oip import codecs as C
from deployments.protocols.oip import open_inference_grpc_pb2 as pb

pytestmark = pytest.mark.unit


def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), str(len(head))


def image_request(items: list[bytes], shape: list[int], **extra: Any) -> tuple[bytes, str]:
    data = C.pack_bytes_items(items)
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": shape,
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        **extra,
    }
    return binary_body(header, data)


def assert_client_error(exc: pytest.ExceptionInfo[SegServeError], code: str) -> None:
    assert exc.value.kind.http_status < 500
    assert exc.value.code == code


def test_bytes_items_round_trip_including_empty_items() -> None:
    items = [b"\x89PNG...", b"", b"x" * 70000]
    packed = C.pack_bytes_items(items)
    assert packed[:4] == len(items[0]).to_bytes(4, "little")
    assert C.split_bytes_items(packed, 3, "image") == tuple(items)


@pytest.mark.parametrize(
    ("buffer", "count", "code"),
    [
        ((10).to_bytes(4, "little") + b"short", 1, "invalid_binary_data"),  # length past the end
        (b"\x01\x00", 1, "invalid_binary_data"),  # not even a length
        (C.pack_bytes_items([b"a", b"b"]), 1, "shape_mismatch"),  # more items than the shape
        (C.pack_bytes_items([b"a"]) + b"\x00", 1, "invalid_binary_data"),  # trailing byte
    ],
)
def test_malformed_bytes_items_are_400(buffer: bytes, count: int, code: str) -> None:
    with pytest.raises(SegServeError) as exc:
        C.split_bytes_items(buffer, count, "image")
    assert_client_error(exc, code)
    assert exc.value.kind is ErrorKind.MALFORMED


@pytest.mark.parametrize("shape", [[1], [2, 1], [2]])
def test_binary_bytes_request_gives_the_files_in_order(shape: list[int]) -> None:
    files = [b"file-a", b"file-b"][: shape[0]]
    body, length = image_request(files, shape, id="r1", parameters={"binary_data_output": True})
    request = C.decode_rest_request(body, length)
    assert C.image_inputs(request) == files
    assert request.id == "r1"
    assert request.binary_output is True
    assert "binary_data_output" not in request.parameters


def test_binary_sizes_must_add_up_exactly() -> None:
    body, length = image_request([b"abc"], [1])
    with pytest.raises(SegServeError) as exc:
        C.decode_rest_request(body + b"extra", length)
    assert_client_error(exc, "binary_size_mismatch")
    with pytest.raises(SegServeError) as exc:
        C.decode_rest_request(body[:-1], length)
    assert_client_error(exc, "binary_size_mismatch")


@pytest.mark.parametrize("header_length", ["-1", "abc", "999999"])
def test_bad_header_length_is_400(header_length: str) -> None:
    body, _ = image_request([b"abc"], [1])
    with pytest.raises(SegServeError) as exc:
        C.decode_rest_request(body, header_length)
    assert_client_error(exc, "binary_size_mismatch")


def test_raw_binary_request_is_one_image_with_binary_outputs() -> None:
    request = C.decode_rest_request(b"\xff\xd8 jpeg bytes", "0")
    assert C.image_inputs(request) == [b"\xff\xd8 jpeg bytes"]
    assert request.binary_for("labels") is True


def test_uint8_binary_and_json_decode_to_the_same_pixels() -> None:
    pixels = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    body, length = binary_body(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 3, 4, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ]
        },
        pixels.tobytes(),
    )
    from_binary = C.image_inputs(C.decode_rest_request(body, length))
    for data in (pixels.tolist(), pixels.ravel().tolist()):  # nested and flat, row-major
        doc = {
            "inputs": [{"name": "image", "shape": [2, 3, 4, 3], "datatype": "UINT8", "data": data}]
        }
        from_json = C.image_inputs(C.decode_rest_request(json.dumps(doc).encode()))
        assert [np.asarray(a).tolist() for a in from_json] == [
            np.asarray(a).tolist() for a in from_binary
        ]
    assert np.array_equal(from_binary[1], pixels[1])


def test_hwc_uint8_is_a_batch_of_one() -> None:
    doc = {"inputs": [{"name": "image", "shape": [1, 2, 3], "datatype": "UINT8", "data": [0] * 6}]}
    images = C.image_inputs(C.decode_rest_request(json.dumps(doc).encode()))
    assert len(images) == 1 and np.asarray(images[0]).shape == (1, 2, 3)


@pytest.mark.parametrize(
    ("inp", "code"),
    [
        (
            {"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [1] * 11},
            "shape_mismatch",
        ),
        (
            {"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [0, 1, 256]},
            "invalid_data",
        ),
        (
            {"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [0, 1, 2.5]},
            "invalid_data",
        ),
        (
            {"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [[0], [1, 2]]},
            "invalid_data",
        ),
        ({"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}, "invalid_datatype"),
        ({"name": "image", "shape": [1], "datatype": "COMPLEX", "data": [1]}, "invalid_datatype"),
        ({"name": "img", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}, "unknown_input"),
        (
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]},
            "invalid_base64",
        ),
        ({"name": "image", "shape": [2], "datatype": "BYTES", "data": ["aGk="]}, "shape_mismatch"),
        (
            {"name": "image", "shape": [1, 2], "datatype": "BYTES", "data": ["aGk=", "aGk="]},
            "shape_mismatch",
        ),
        ({"name": "image", "shape": [1], "datatype": "BYTES"}, "missing_data"),
        ({"name": "image", "shape": [-1], "datatype": "BYTES", "data": []}, "invalid_shape"),
        ({"name": "image", "shape": "1", "datatype": "BYTES", "data": []}, "invalid_request"),
    ],
)
def test_invalid_tensors_are_client_errors(inp: dict[str, Any], code: str) -> None:
    with pytest.raises(SegServeError) as exc:
        C.image_inputs(C.decode_rest_request(json.dumps({"inputs": [inp]}).encode()))
    assert_client_error(exc, code)


def test_json_bytes_accept_base64_and_data_urls() -> None:
    doc = {
        "inputs": [
            {
                "name": "image",
                "shape": [3, 1],
                "datatype": "BYTES",
                "data": [
                    [base64.b64encode(b"\x00\xffraw").decode()],
                    ["data:image/png;base64," + base64.b64encode(b"png!").decode()],
                    ["data:,plain%20text"],
                ],
            }
        ]
    }
    assert C.image_inputs(C.decode_rest_request(json.dumps(doc).encode())) == [
        b"\x00\xffraw",
        b"png!",
        b"plain text",
    ]


def sample_outputs() -> list[C.Tensor]:
    maps = [np.array([[0, 1], [2, 3]], np.uint8), np.array([[4, 5], [6, 7]], np.uint8)]
    return [
        C.labels_tensor(maps),
        C.classes_tensor([[{"id": 0, "name": "wall"}], [{"id": 1, "name": "sky"}]]),
        C.mask_png_tensor([b"\x89PNG-a", b"\x89PNG-b"]),
    ]


@pytest.mark.parametrize(
    ("outputs", "binary_output", "expect_binary"),
    [
        (None, False, {"labels": False, "classes": False, "mask_png": False}),
        (None, True, {"labels": True, "classes": True, "mask_png": True}),
        (
            [{"name": "labels", "parameters": {"binary_data": True}}, {"name": "classes"}],
            False,
            {"labels": True, "classes": False},
        ),
        (
            [{"name": "mask_png", "parameters": {"binary_data": False}}, {"name": "labels"}],
            True,
            {"mask_png": False, "labels": True},
        ),
    ],
)
def test_rest_response_json_binary_and_mixed_round_trip(
    outputs: list[dict[str, Any]] | None, binary_output: bool, expect_binary: dict[str, bool]
) -> None:
    extra: dict[str, Any] = {"id": "42", "parameters": {"binary_data_output": binary_output}}
    if outputs is not None:
        extra["outputs"] = outputs
    body, length = image_request([b"a", b"b"], [2], **extra)
    request = C.decode_rest_request(body, length)
    names = request.output_names()
    tensors = {t.name: t for t in sample_outputs()}
    encoded = C.encode_rest_response(
        request, [tensors[n] for n in names], model_name="m", parameters={"batch_size": 2}
    )
    header_length = encoded.headers.get(C.HEADER_LENGTH)
    head = json.loads(encoded.body[: int(header_length)] if header_length else encoded.body)
    assert head["id"] == "42" and head["model_version"] == "1"
    assert head["parameters"] == {"batch_size": 2}
    assert [o["name"] for o in head["outputs"]] == list(expect_binary)
    assert {
        o["name"]: "binary_data_size" in o.get("parameters", {}) for o in head["outputs"]
    } == expect_binary
    assert (header_length is not None) == any(expect_binary.values())
    decoded = C.decode_rest_response(encoded.body, header_length)
    if "labels" in decoded:
        assert decoded["labels"].datatype == "UINT8"
        assert np.array_equal(decoded["labels"].array, tensors["labels"].array)
    if "classes" in decoded:
        assert [json.loads(i) for i in decoded["classes"].items][1] == [{"id": 1, "name": "sky"}]
    if "mask_png" in decoded:
        items = decoded["mask_png"].items
        if not expect_binary["mask_png"]:  # base64 in JSON, as BYTES are read
            items = tuple(base64.b64decode(i) for i in items)
        assert items == (b"\x89PNG-a", b"\x89PNG-b")


def test_unknown_or_repeated_output_is_400() -> None:
    for outputs, code in (
        ([{"name": "logits"}], "unknown_output"),
        ([{"name": "labels"}] * 2, "duplicate_output"),
    ):
        body, length = image_request([b"a"], [1], outputs=outputs)
        with pytest.raises(SegServeError) as exc:
            C.decode_rest_request(body, length).output_names()
        assert_client_error(exc, code)


def test_labels_of_different_sizes_are_400_naming_the_way_out() -> None:
    with pytest.raises(SegServeError) as exc:
        C.labels_tensor([np.zeros((2, 3), np.uint8), np.zeros((4, 5), np.uint8)])
    assert_client_error(exc, "mixed_sizes")
    assert "mask_png" in exc.value.message


def test_wide_label_maps_are_uint16() -> None:
    tensor = C.labels_tensor([np.array([[300, 2]], np.uint16)])
    assert tensor.datatype == "UINT16"
    assert C._to_binary(tensor) == np.array([[300, 2]], "<u2").tobytes()


@pytest.mark.parametrize("raw", [True, False])
def test_grpc_request_round_trip_with_every_parameter_kind(raw: bool) -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    request = C.InferRequest(
        inputs=(C.Tensor("image", "UINT8", pixels.shape, pixels),),
        id="abc",
        parameters={
            "strict": True,
            "n": -3,
            "mask_size": "model",
            "budget_ms": 250.5,
            "big": 2**64 - 1,
        },
        outputs=(C.RequestedOutput("labels"),),
    )
    message = C.encode_grpc_request("m", request, raw=raw)
    assert message.parameters["big"].WhichOneof("parameter_choice") == "uint64_param"
    assert message.parameters["budget_ms"].WhichOneof("parameter_choice") == "double_param"
    decoded = C.decode_grpc_request(pb.ModelInferRequest.FromString(message.SerializeToString()))
    assert decoded.parameters == request.parameters
    assert decoded.id == "abc" and decoded.model_name == "m"
    assert decoded.output_names() == ("labels",)
    assert np.array_equal(C.image_inputs(decoded)[0], pixels[0])


def test_grpc_bytes_contents_and_raw_agree() -> None:
    files = [b"one", b"two"]
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="image", datatype="BYTES", shape=[2, 1]).contents.bytes_contents.extend(
        files
    )
    raw = pb.ModelInferRequest(model_name="m", raw_input_contents=[C.pack_bytes_items(files)])
    raw.inputs.add(name="image", datatype="BYTES", shape=[2])
    assert C.image_inputs(C.decode_grpc_request(typed)) == files
    assert C.image_inputs(C.decode_grpc_request(raw)) == files


def test_grpc_raw_count_and_size_mismatches_are_400() -> None:
    message = pb.ModelInferRequest(raw_input_contents=[b"\x00" * 5])
    message.inputs.add(name="image", datatype="UINT8", shape=[1, 1, 2, 3])
    with pytest.raises(SegServeError) as exc:
        C.decode_grpc_request(message)
    assert_client_error(exc, "binary_size_mismatch")
    two = pb.ModelInferRequest(raw_input_contents=[b"", b""])
    two.inputs.add(name="image", datatype="BYTES", shape=[0])
    with pytest.raises(SegServeError) as exc:
        C.decode_grpc_request(two)
    assert_client_error(exc, "binary_size_mismatch")


def test_grpc_response_has_every_output_raw_in_order() -> None:
    request = C.InferRequest(inputs=(), id="7")
    response = C.encode_grpc_response(
        request, sample_outputs(), model_name="m", parameters={"batch_size": 2}
    )
    assert [o.name for o in response.outputs] == ["labels", "classes", "mask_png"]
    assert len(response.raw_output_contents) == 3 and response.id == "7"
    decoded = C.decode_grpc_response(response)
    assert decoded["labels"].shape == (2, 2, 2)
    assert decoded["mask_png"].items == (b"\x89PNG-a", b"\x89PNG-b")


def test_model_version_one_or_empty_else_404() -> None:
    C.check_model_version("")
    C.check_model_version("1")
    with pytest.raises(SegServeError) as exc:
        C.check_model_version("2")
    assert exc.value.kind.http_status == 404


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
def test_decompression_is_bounded(coding: str) -> None:
    body = b"A" * 10_000
    if coding == "gzip":
        packed = gzip.compress(body)
    elif coding == "deflate":
        packed = zlib.compress(body)
    else:
        squeezer = zlib.compressobj(wbits=-15)
        packed = squeezer.compress(body) + squeezer.flush()
    header = "deflate" if coding == "raw-deflate" else coding
    assert C.decompress_body(packed, header, 10_000) == body
    with pytest.raises(SegServeError) as exc:
        C.decompress_body(packed, header, 9_999)
    assert exc.value.kind.http_status == 413
    with pytest.raises(SegServeError) as exc:
        C.decompress_body(packed[: len(packed) // 2], header, 10_000)
    assert_client_error(exc, "invalid_compression")


def test_unknown_content_encoding_is_415_and_gzip_responses_inflate() -> None:
    with pytest.raises(SegServeError) as exc:
        C.decompress_body(b"x", "br", 100)
    assert exc.value.kind.http_status == 415
    body, coding = C.compress_body(b"B" * 1000, "deflate, gzip")
    assert coding == "gzip" and gzip.decompress(body) == b"B" * 1000
    assert C.compress_body(b"B", None) == (b"B", None)


def test_segserve_and_oip_stubs_share_one_process() -> None:
    from deployments.protocols import segserve_pb2

    assert pb.DESCRIPTOR.package == "inference"
    assert segserve_pb2.DESCRIPTOR.package != pb.DESCRIPTOR.package
    oip = {m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    native = {m.name for s in segserve_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods}
    # Ray's gRPC proxy dispatches on the method name alone.
    assert not oip & native
