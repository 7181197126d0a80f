"""The HTTP app in-process: every status, header, form and negotiation the API documents."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from deployments.pipeline.imaging import fit_within
from deployments.protocols.wire import SegmentResult, decode_label_png
from tests.images import encode, jpeg, png_bomb, scene
from tests.transport.conftest import MAX_REQUEST_BYTES

RAW = {"Content-Type": "image/jpeg"}


def error_of(response: object) -> tuple[int, str]:
    status = response.status_code  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return status, body["error"]["code"]


def test_a_raw_jpeg_gets_the_json_result(http_client: TestClient) -> None:
    response = http_client.post("/v1/segment", content=jpeg(96, 64), headers=RAW)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    result = SegmentResult.from_json(response.json())
    assert (result.model, result.weights, result.warning) == ("tiny", "pretrained", None)
    assert (result.width, result.height, result.mask_size) == (96, 64, (96, 64))
    assert result.labels is not None and result.labels.shape == (64, 96)
    assert result.classes and sum(c.pixels for c in result.classes) == 96 * 64
    counts = np.bincount(result.labels.ravel())
    assert {c.id: c.pixels for c in result.classes} == {
        int(i): int(counts[i]) for i in np.flatnonzero(counts)
    }
    assert result.budget.chosen_by == "default" and result.budget.met is None


def test_random_weights_are_announced(http_client: TestClient) -> None:
    body = http_client.post(
        "/v1/segment", params={"model": "tiny-random"}, content=jpeg(32, 32), headers=RAW
    ).json()
    assert body["weights"] == "random" and "random weights" in body["warning"]


def test_multipart_upload_and_its_errors(http_client: TestClient) -> None:
    ok = http_client.post("/v1/segment", files={"image": ("p.png", encode(scene(40, 30), "PNG"))})
    assert ok.status_code == 200 and ok.json()["width"] == 40
    missing = http_client.post("/v1/segment", files={"photo": ("p.png", b"x")})
    assert error_of(missing) == (400, "malformed_request")
    broken = http_client.post(
        "/v1/segment",
        content=b'--b\r\nContent-Disposition: form-data; name="image"',
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert error_of(broken)[0] == 400


def test_accept_png_gets_the_label_png_with_headers(http_client: TestClient) -> None:
    headers = {**RAW, "Accept": "image/png"}
    response = http_client.post(
        "/v1/segment", params={"outputs": "classes"}, content=jpeg(50, 40), headers=headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-segserve-model"] == "tiny"
    assert response.headers["x-segserve-weights"] == "pretrained"
    assert response.headers["x-segserve-chosen-by"] == "default"
    assert int(response.headers["x-segserve-batch-size"]) == 1
    assert float(response.headers["x-segserve-total-ms"]) > 0
    assert decode_label_png(response.content).shape == (40, 50)
    both = http_client.post(
        "/v1/segment",
        content=jpeg(50, 40),
        headers={**RAW, "Accept": "image/png, application/json"},
    )
    assert both.headers["content-type"] == "application/json"


def test_outputs_and_mask_size(http_client: TestClient) -> None:
    body = http_client.post(
        "/v1/segment",
        params={"outputs": "mask", "mask_size": "model"},
        content=jpeg(1024, 512),
        headers=RAW,
    ).json()
    assert "classes" not in body
    # The label map's bound (label_max_pixels, 512x512 by default), same aspect ratio.
    assert (body["mask"]["width"], body["mask"]["height"]) == fit_within(1024, 512, 512 * 512)
    classes_only = http_client.post(
        "/v1/segment", params={"outputs": "classes"}, content=jpeg(64, 64), headers=RAW
    ).json()
    assert "mask" not in classes_only and classes_only["classes"]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"budget_ms": "soon"}, "invalid_parameter"),
        ({"budget_ms": "-5"}, "invalid_parameter"),
        ({"outputs": "mask,poem"}, "invalid_parameter"),
        ({"mask_size": "huge"}, "invalid_parameter"),
        ({"strict": "maybe"}, "invalid_parameter"),
    ],
)
def test_bad_parameters_are_422(http_client: TestClient, params: dict[str, str], code: str) -> None:
    response = http_client.post("/v1/segment", params=params, content=jpeg(8, 8), headers=RAW)
    assert error_of(response) == (422, code)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"hello, world", "image/jpeg", 415, "unsupported_image"),
        (jpeg(64, 64)[:200], "image/jpeg", 400, "corrupt_image"),
        (png_bomb(5000, 5000), "image/png", 413, "image_too_large"),
        (jpeg(8, 8), "text/plain", 415, "unsupported_image"),
        (b"", "image/png", 400, "empty_body"),
    ],
)
def test_bad_bodies_get_their_documented_status(
    http_client: TestClient, body: bytes, content_type: str, status: int, code: str
) -> None:
    response = http_client.post("/v1/segment", content=body, headers={"Content-Type": content_type})
    assert error_of(response) == (status, code)


def test_bodies_over_the_limit_are_413_declared_or_streamed(http_client: TestClient) -> None:
    big = b"\xff" * (MAX_REQUEST_BYTES + 1)
    declared = http_client.post("/v1/segment", content=big, headers=RAW)
    assert error_of(declared) == (413, "payload_too_large")

    def chunks() -> object:
        for _ in range(3):
            yield b"\xff" * (MAX_REQUEST_BYTES // 2)

    streamed = http_client.post("/v1/segment", content=chunks(), headers=RAW)  # type: ignore[arg-type]
    assert error_of(streamed) == (413, "payload_too_large")


def test_unknown_models_routes_and_methods(http_client: TestClient) -> None:
    assert error_of(
        http_client.post("/v1/segment", params={"model": "b7"}, content=b"x", headers=RAW)
    ) == (404, "unknown_model")
    assert error_of(http_client.get("/v1/models/b7")) == (404, "unknown_model")
    assert error_of(http_client.get("/v1/nothing")) == (404, "not_found")
    assert error_of(http_client.get("/v1/segment")) == (405, "method_not_allowed")


def test_a_strict_unreachable_budget_is_504_without_running(http_client: TestClient) -> None:
    response = http_client.post(
        "/v1/segment", params={"budget_ms": "1", "strict": "true"}, content=jpeg(64, 64),
        headers=RAW,
    )  # fmt: skip
    assert error_of(response) == (504, "budget_unreachable")


def test_models_health_and_readiness(http_client: TestClient) -> None:
    models = http_client.get("/v1/models").json()
    assert models["default"] == "tiny"
    by_name = {m["name"]: m for m in models["models"]}
    assert set(by_name) == {"tiny", "tiny-random"}
    assert by_name["tiny"]["ready"] is True and by_name["tiny"]["weights"] == "pretrained"
    assert by_name["tiny-random"]["weights"] == "random"
    assert len(by_name["tiny"]["labels"]) == 150
    assert http_client.get("/v1/models/tiny").json()["name"] == "tiny"
    assert http_client.get("/healthz").json() == {"status": "ok"}
    ready = http_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == ["tiny", "tiny-random"]
    openapi = http_client.get("/openapi.json").json()
    assert "/v1/segment" in openapi["paths"]


def test_replica_failures_map_to_503_with_retry_after(broken_http: TestClient) -> None:
    for model, code in (("gone", "not_ready"), ("full", "overloaded")):
        response = broken_http.post(
            "/v1/segment", params={"model": model}, content=jpeg(32, 32), headers=RAW
        )
        assert error_of(response) == (503, code)
        assert response.headers["retry-after"] == "1"
    not_ready = broken_http.get("/readyz")
    assert error_of(not_ready) == (503, "not_ready")
    assert "gone" in not_ready.json()["error"]["message"]
    listed = {m["name"]: m for m in broken_http.get("/v1/models").json()["models"]}
    assert listed["tiny"]["ready"] is True and listed["gone"]["ready"] is False


def test_a_bug_is_a_500_with_a_reference_and_no_internals(broken_http: TestClient) -> None:
    response = broken_http.post(
        "/v1/segment", params={"model": "buggy"}, content=jpeg(32, 32), headers=RAW
    )
    assert error_of(response) == (500, "internal")
    text = json.dumps(response.json())
    assert "reference" in text and "/srv" not in text and "KeyError" not in text
    # ... and the service keeps answering.
    again = broken_http.post("/v1/segment", content=jpeg(32, 32), headers=RAW)
    assert again.status_code == 200
