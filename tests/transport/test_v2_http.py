"""The ``/v2`` REST routes in-process: every path, status, header and tensor form the Open
Inference Protocol (and Triton's binary tensor extension) gives them, over the real service."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from deployments.pipeline.imaging import fit_within
from tests.images import encode, jpeg, scene
from tests.transport.conftest import MAX_REQUEST_BYTES
from tests.transport.v2_fixtures import (  # noqa: F401  (the *_fixture imports)
    NOT_READY_MODEL,
    v1_labels,
    v2_http_broken_fixture,
    v2_http_fixture,
)

HEADER = "Inference-Header-Content-Length"
#: TestClient's responses (Starlette's own httpx flavour): typed loosely.
Response = Any


def v2_error(response: Response, status: int) -> str:
    """The v2 error form: exactly JSON, ``error`` a message, ``code`` beside it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body["error"], str) and body["error"], body
    code: str = body["code"]
    return code


def json_infer(
    client: TestClient, body: dict[str, Any], model: str = "tiny", **headers: str
) -> Response:
    return client.post(f"/v2/models/{model}/infer", content=json.dumps(body), headers=headers)


def bytes_input(*items: bytes, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "name": "image",
        "datatype": "BYTES",
        "shape": shape or [len(items)],
        "data": [base64.b64encode(item).decode() for item in items],
    }


def binary_body(
    items: list[bytes], extra: dict[str, Any] | None = None, size_delta: int = 0
) -> tuple[bytes, dict[str, str]]:
    """A request as tritonclient sends it: a JSON header, then the length-prefixed BYTES."""
    raw = b"".join(len(item).to_bytes(4, "little") + item for item in items)
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(items)],
                "parameters": {"binary_data_size": len(raw) + size_delta},
            }
        ],
        "parameters": {"binary_data_output": True},
        **(extra or {}),
    }
    head = json.dumps(header).encode()
    return head + raw, {HEADER: str(len(head))}


def split_binary(response: Response) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The response's JSON part and each binary output's bytes, read as a client would."""
    length = int(response.headers[HEADER])
    head = json.loads(response.content[:length])
    chunks: dict[str, bytes] = {}
    offset = length
    for output in head["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            chunks[output["name"]] = response.content[offset : offset + size]
            offset += size
    assert offset == len(response.content)
    return head, chunks


# --- metadata, health, readiness ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2", "/v2/"])
def test_server_metadata_names_the_binary_extension(v2_http: TestClient, path: str) -> None:
    response = v2_http.get(path)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["name"] == "segserve" and body["version"]
    assert "binary_tensor_data" in body["extensions"]


def test_health_and_readiness_are_json(v2_http: TestClient, v2_http_broken: TestClient) -> None:
    assert v2_http.get("/v2/health/live").json() == {"live": True}
    assert v2_http.get("/v2/health/ready").json() == {"ready": True}
    assert v2_http_broken.get("/v2/health/live").json() == {"live": True}
    response = v2_http_broken.get("/v2/health/ready")
    assert v2_error(response, 503) == "not_ready"
    assert response.json()["ready"] is False and NOT_READY_MODEL in response.json()["error"]


def test_model_readiness(v2_http_broken: TestClient) -> None:
    for path in ("/v2/models/tiny/ready", "/v2/models/tiny/versions/1/ready"):
        response = v2_http_broken.get(path)
        assert response.status_code == 200 and response.json() == {"name": "tiny", "ready": True}
    response = v2_http_broken.get(f"/v2/models/{NOT_READY_MODEL}/ready")
    assert v2_error(response, 400) == "not_ready" and response.json()["ready"] is False
    assert v2_error(v2_http_broken.get("/v2/models/nope/ready"), 404) == "unknown_model"
    response = v2_http_broken.get("/v2/models/tiny/versions/2/ready")
    assert v2_error(response, 404) == "unknown_model_version"


def test_model_metadata(v2_http: TestClient) -> None:
    for path in ("/v2/models/tiny", "/v2/models/tiny/versions/1"):
        body = v2_http.get(path).json()
        assert (body["name"], body["versions"], body["platform"]) == ("tiny", ["1"], "hf_segformer")
        assert body["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert [o["name"] for o in body["outputs"]] == ["labels", "classes", "mask_png"]
    assert v2_error(v2_http.get("/v2/models/nope"), 404) == "unknown_model"
    assert v2_error(v2_http.get("/v2/models/tiny/versions/7"), 404) == "unknown_model_version"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/tiny/load"),
        ("GET", "/v2/models/stats"),
        ("GET", "/v2/models/tiny/stats"),
        ("GET", "/v2/models/tiny/versions/1/stats"),
        ("GET", "/v2/models/tiny/config"),
        ("GET", "/v2/systemsharedmemory/status"),
        ("POST", "/v2/cudasharedmemory/region/r/unregister"),
        ("GET", "/v2/trace/setting"),
        ("GET", "/v2/logging"),
    ],
)
def test_triton_only_extensions_answer_501(v2_http: TestClient, method: str, path: str) -> None:
    assert v2_error(v2_http.request(method, path), 501) == "not_implemented"


def test_an_unknown_v2_path_is_a_v2_404(v2_http: TestClient) -> None:
    assert v2_error(v2_http.get("/v2/nothing/here"), 404) == "not_found"


# --- infer: tensors in and out ------------------------------------------------------------


def test_json_infer_answers_v1s_label_map(v2_http: TestClient) -> None:
    data = jpeg(96, 64, seed=3)
    response = json_infer(v2_http, {"id": "r-1", "inputs": [bytes_input(data)]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("tiny", "1", "r-1")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == ["labels", "classes", "mask_png"]
    labels = outputs["labels"]
    assert (labels["datatype"], labels["shape"]) == ("UINT8", [1, 64, 96])
    expected = v1_labels(v2_http, data)
    np.testing.assert_array_equal(np.array(labels["data"]).reshape(64, 96), expected)
    (table,) = (json.loads(item) for item in outputs["classes"]["data"])
    assert sum(row["pixels"] for row in table) == 96 * 64
    png = base64.b64decode(outputs["mask_png"]["data"][0])
    assert png.startswith(b"\x89PNG")
    parameters = body["parameters"]
    assert (parameters["model"], parameters["weights"], parameters["chosen_by"]) == (
        "tiny",
        "pretrained",
        "explicit",
    )
    assert parameters["batch_size"] >= 1 and isinstance(parameters["total_ms"], int)


def test_binary_request_without_content_type_gets_binary_outputs(v2_http: TestClient) -> None:
    first, second = jpeg(96, 64, seed=1), jpeg(96, 64, seed=2)
    body, headers = binary_body([first, second])
    response = v2_http.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    head, chunks = split_binary(response)
    assert list(chunks) == ["labels", "classes", "mask_png"]
    labels = np.frombuffer(chunks["labels"], np.uint8).reshape(2, 64, 96)
    np.testing.assert_array_equal(labels[0], v1_labels(v2_http, first))
    np.testing.assert_array_equal(labels[1], v1_labels(v2_http, second))
    assert head["outputs"][0]["shape"] == [2, 64, 96]


def test_outputs_json_and_binary_mixed_in_the_requested_order(v2_http: TestClient) -> None:
    body, headers = binary_body(
        [jpeg(64, 48)],
        {
            "outputs": [
                {"name": "classes", "parameters": {"binary_data": False}},
                {"name": "labels", "parameters": {"binary_data": True}},
            ]
        },
    )
    response = v2_http.post("/v2/models/tiny/infer", content=body, headers=headers)
    head, chunks = split_binary(response)
    assert [o["name"] for o in head["outputs"]] == ["classes", "labels"]
    assert "data" in head["outputs"][0] and list(chunks) == ["labels"]


def test_the_raw_binary_request_is_one_image(v2_http: TestClient) -> None:
    """Triton's ``Inference-Header-Content-Length: 0``: the body is one image, all binary."""
    data = jpeg(64, 48, seed=9)
    response = v2_http.post("/v2/models/tiny/infer", content=data, headers={HEADER: "0"})
    _, chunks = split_binary(response)
    labels = np.frombuffer(chunks["labels"], np.uint8).reshape(48, 64)
    np.testing.assert_array_equal(labels, v1_labels(v2_http, data))


def test_uint8_pixels_and_data_urls_match_the_encoded_file(v2_http: TestClient) -> None:
    pixels = scene(40, 30, seed=4)
    png = encode(pixels, "PNG")
    expected = v1_labels(v2_http, png)
    uint8 = {"name": "image", "datatype": "UINT8", "shape": [30, 40, 3], "data": pixels.tolist()}
    data_url = bytes_input(png)
    data_url["data"] = ["data:image/png;base64," + base64.b64encode(png).decode()]
    for tensor in (uint8, data_url):
        body = {"inputs": [tensor], "outputs": [{"name": "labels"}]}
        (labels,) = json_infer(v2_http, body).json()["outputs"]
        np.testing.assert_array_equal(np.array(labels["data"]).reshape(30, 40), expected)


def test_budget_mask_size_and_auto_routing(v2_http: TestClient) -> None:
    data = jpeg(800, 600, seed=7)
    body = {
        "inputs": [bytes_input(data)],
        "outputs": [{"name": "labels"}],
        "parameters": {"budget_ms": 60000, "mask_size": "model", "note": "ignored"},
    }
    response = json_infer(v2_http, body, model="auto")
    assert response.status_code == 200, response.text
    answer = response.json()
    width, height = fit_within(800, 600, 512 * 512)
    assert answer["model_name"] == "auto"
    assert answer["outputs"][0]["shape"] == [1, height, width]
    parameters = answer["parameters"]
    assert parameters["budget_ms"] == 60000 and parameters["budget_met"] is True
    assert parameters["chosen_by"] in {"budget", "fastest"}
    # tritonclient's timeout (microseconds) is the budget when budget_ms is absent
    body["parameters"] = {"timeout": 45_000_000}
    assert json_infer(v2_http, body, model="tiny").json()["parameters"]["budget_ms"] == 45000


def test_random_weights_are_said(v2_http: TestClient) -> None:
    body = {"inputs": [bytes_input(jpeg(32, 32))], "outputs": [{"name": "classes"}]}
    parameters = json_infer(v2_http, body, model="tiny-random").json()["parameters"]
    assert parameters["weights"] == "random" and "random" in parameters["warning"]


def test_compressed_request_and_response(v2_http: TestClient) -> None:
    data = jpeg(64, 48, seed=11)
    plain, headers = binary_body([data])
    expected = v1_labels(v2_http, data)
    for coding, packed in (("gzip", gzip.compress(plain)), ("deflate", zlib.compress(plain))):
        response = v2_http.post(
            "/v2/models/tiny/infer",
            content=packed,
            headers={**headers, "Content-Encoding": coding, "Accept-Encoding": coding},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-encoding"] == coding  # httpx inflated it for us
        _, chunks = split_binary(response)
        labels = np.frombuffer(chunks["labels"], np.uint8).reshape(48, 64)
        np.testing.assert_array_equal(labels, expected)


# --- infer: mistakes are client errors ----------------------------------------------------


def test_a_body_that_inflates_past_the_limit_is_413(v2_http: TestClient) -> None:
    bomb = gzip.compress(b"\0" * (MAX_REQUEST_BYTES + 1))
    response = v2_http.post(
        "/v2/models/tiny/infer", content=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert v2_error(response, 413) == "payload_too_large"
    response = v2_http.post(
        "/v2/models/tiny/infer", content=b"x", headers={"Content-Encoding": "br"}
    )
    assert v2_error(response, 415) == "unsupported_content_encoding"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"inputs": [bytes_input(b"\xff\xd8\xffnot a jpeg")]}, 415, "unsupported_image"),
        ({"inputs": [{**bytes_input(jpeg(8, 8)), "name": "img"}]}, 400, "unknown_input"),
        (
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.5]}]},
            400,
            "invalid_datatype",
        ),
        ({"inputs": [bytes_input(jpeg(8, 8), shape=[2])]}, 400, "shape_mismatch"),
        ({"inputs": [{**bytes_input(jpeg(8, 8)), "data": ["%%%"]}]}, 400, "invalid_base64"),
        ({"inputs": "nope"}, 400, "invalid_request"),
        (
            {"inputs": [bytes_input(jpeg(8, 8))], "outputs": [{"name": "logits"}]},
            400,
            "unknown_output",
        ),
        (
            {"inputs": [bytes_input(jpeg(8, 8))], "parameters": {"budget_ms": "soon"}},
            400,
            "invalid_parameter",
        ),
        (
            {"inputs": [bytes_input(jpeg(8, 8))], "parameters": {"sequence_id": 7}},
            400,
            "sequences_unsupported",
        ),
        (
            {"inputs": [bytes_input(jpeg(32, 24), jpeg(24, 32))], "outputs": [{"name": "labels"}]},
            400,
            "mixed_sizes",
        ),
    ],
)
def test_mistakes_are_4xx_in_the_v2_form(
    v2_http: TestClient, body: dict[str, Any], status: int, code: str
) -> None:
    assert v2_error(json_infer(v2_http, body), status) == code


def test_binary_sizes_must_add_up(v2_http: TestClient) -> None:
    for delta in (1, -1):
        body, headers = binary_body([jpeg(16, 16)], size_delta=delta)
        response = v2_http.post("/v2/models/tiny/infer", content=body, headers=headers)
        assert v2_error(response, 400) in {"binary_size_mismatch", "invalid_binary_data"}
    body, _ = binary_body([jpeg(16, 16)])
    response = v2_http.post("/v2/models/tiny/infer", content=body, headers={HEADER: "999999"})
    assert v2_error(response, 400) == "binary_size_mismatch"


def test_unknown_models_versions_and_down_models(
    v2_http: TestClient, v2_http_broken: TestClient
) -> None:
    body = {"inputs": [bytes_input(jpeg(16, 16))]}
    assert v2_error(json_infer(v2_http, body, model="nope"), 404) == "unknown_model"
    response = v2_http.post("/v2/models/tiny/versions/3/infer", content=json.dumps(body).encode())
    assert v2_error(response, 404) == "unknown_model_version"
    response = v2_http.post("/v2/models/tiny/versions/1/infer", content=json.dumps(body))
    assert response.status_code == 200 and response.json()["model_version"] == "1"
    response = json_infer(v2_http_broken, body, model=NOT_READY_MODEL)
    assert v2_error(response, 503) == "not_ready" and response.headers["retry-after"] == "1"
