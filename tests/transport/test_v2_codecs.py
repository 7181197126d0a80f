"""The v2 tensor codecs on their own: the encodings real clients send, and the mistakes
that must be 400s (never 5xx) before any image is decoded."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from deployments.pipeline.errors import MalformedRequest, PayloadTooLarge, SegServeError
from deployments.protocols.oip import codecs
from deployments.protocols.oip import open_inference_grpc_pb2 as pb


def code_of(call: object) -> tuple[int, str]:
    with pytest.raises(SegServeError) as info:
        call()  # type: ignore[operator]
    return info.value.kind.http_status, info.value.code


def test_deflate_bodies_zlib_wrapped_or_raw_and_gzip() -> None:
    body = b'{"inputs": []}' * 50
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw_deflate = raw.compress(body) + raw.flush()
    for coding, packed in (
        ("gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        ("deflate", raw_deflate),
        ("identity", body),
        (None, body),
    ):
        assert codecs.decompress_body(packed, coding, len(body)) == body
    status, code = code_of(lambda: codecs.decompress_body(gzip.compress(body)[:-9], "gzip", 10**6))
    assert (status, code) == (400, "invalid_compression")
    with pytest.raises(PayloadTooLarge):
        codecs.decompress_body(gzip.compress(body), "gzip", len(body) - 1)


def test_responses_compress_for_what_the_client_accepts() -> None:
    body = b"x" * 1000
    packed, coding = codecs.compress_body(body, "deflate, gzip")
    assert coding == "gzip" and gzip.decompress(packed) == body
    packed, coding = codecs.compress_body(body, "gzip;q=0, deflate")
    assert coding == "deflate" and zlib.decompress(packed) == body
    assert codecs.compress_body(body, None) == (body, None)


def test_binary_bytes_items_must_fill_the_buffer_exactly() -> None:
    items = [b"abc", b"", b"defg"]
    packed = codecs.pack_bytes_items(items)
    assert codecs.split_bytes_items(packed, 3, "image") == tuple(items)
    for broken, count in ((packed + b"\x01", 3), (packed[:-1], 3), (packed, 2)):
        with pytest.raises(MalformedRequest):
            codecs.split_bytes_items(broken, count, "image")


def test_json_uint8_values_out_of_range_or_ragged_are_400() -> None:
    for data in ([[[256, 0, 0]]], [[[-1, 0, 0]]], [[[0.5, 0, 0]]], [[[1, 2], [3]]]):
        body = {
            "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 3], "data": data}]
        }
        status, _ = code_of(lambda b=body: codecs.decode_rest_request(json.dumps(b).encode()))
        assert status == 400


def test_flat_and_nested_json_data_read_the_same() -> None:
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for data in (pixels.tolist(), pixels.ravel().tolist()):
        body = {
            "inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 3, 3], "data": data}]
        }
        (image,) = codecs.image_inputs(codecs.decode_rest_request(json.dumps(body).encode()))
        assert isinstance(image, np.ndarray)
        np.testing.assert_array_equal(image, pixels)


def test_labels_widen_to_uint16_and_refuse_mixed_sizes() -> None:
    wide = codecs.labels_tensor([np.full((2, 3), 300, np.uint16)])
    assert (wide.datatype, wide.shape) == ("UINT16", (1, 2, 3))
    status, code = code_of(
        lambda: codecs.labels_tensor([np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8)])
    )
    assert (status, code) == (400, "mixed_sizes")


def test_grpc_parameters_of_every_kind_round_trip() -> None:
    message = pb.ModelInferRequest(model_name="m")
    values: dict[str, codecs.ParamValue] = {"a": True, "b": 7, "c": 2.5, "d": "x", "e": 2**64 - 1}
    for key, value in values.items():
        codecs.param_to_proto(value, message.parameters[key])
    assert message.parameters["e"].WhichOneof("parameter_choice") == "uint64_param"
    message.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"img"
    )
    decoded = codecs.decode_grpc_request(message)
    assert dict(decoded.parameters) == values
    assert codecs.image_inputs(decoded) == [b"img"]
