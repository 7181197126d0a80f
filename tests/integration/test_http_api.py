"""The HTTP API through a real Ray Serve: results, batching, limits and errors."""

from __future__ import annotations

import asyncio
import base64
import sys
from typing import Any

import httpx
import numpy as np
import pytest

from deployments.adapters.hf_segformer import HFSegformerAdapter
from deployments.config import LimitsConfig
from deployments.pipeline.imaging import decode_image, fit_within, resize_labels
from deployments.protocols.wire import decode_label_png
from tests.images import encode, jpeg, png_bomb, scene
from tests.integration.conftest import MAX_REQUEST_BYTES, Served

PNG = {"Content-Type": "image/png"}
JPEG = {"Content-Type": "image/jpeg"}


def expected_labels(adapter: HFSegformerAdapter, data: bytes) -> np.ndarray:
    decoded = decode_image(data, adapter.input_spec, LimitsConfig().image_limits())
    label_size = fit_within(decoded.width, decoded.height, 512 * 512)
    (labels,) = adapter.predict_batch([decoded.pixels], [label_size])
    return resize_labels(labels, decoded.width, decoded.height)


def mask_of(body: dict[str, Any]) -> np.ndarray:
    return decode_label_png(base64.b64decode(body["mask"]["data"]))


def test_segment_returns_the_models_label_map_and_class_table(
    client: httpx.Client, tiny_adapter: HFSegformerAdapter
) -> None:
    data = encode(scene(300, 200, seed=7), "PNG")
    response = client.post("/v1/segment", content=data, headers=PNG)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny" and body["weights"] == "pretrained"
    assert (body["width"], body["height"]) == (300, 200)
    assert body["processed"] == {"width": 128, "height": 128}
    mask = mask_of(body)
    assert np.array_equal(mask, expected_labels(tiny_adapter, data))
    counts = np.bincount(mask.ravel(), minlength=150)
    names = tiny_adapter.labels
    assert body["classes"] == sorted(body["classes"], key=lambda c: -c["fraction"])
    for row in body["classes"]:
        assert row["pixels"] == counts[row["id"]] and row["name"] == names[row["id"]]
    assert set(body["timings_ms"]) == {"decode", "queue", "inference", "encode", "total"}
    assert body["batch_size"] >= 1


def test_sixteen_concurrent_requests_are_batched_and_all_correct(
    served: Served, tiny_adapter: HFSegformerAdapter
) -> None:
    images = [jpeg(160 + 7 * i, 120 + 5 * i, seed=i) for i in range(16)]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=120) as http:
            return await asyncio.gather(
                *(http.post("/v1/segment", content=data, headers=JPEG) for data in images)
            )

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * 16
    # A batch of 8 runs other matrix shapes than a batch of 1, so float sums can
    # differ in the last bit and flip an exact tie between two classes: which
    # requests share a batch depends on timing. Same answer otherwise.
    for data, response in zip(images, responses, strict=True):
        agreement = (mask_of(response.json()) == expected_labels(tiny_adapter, data)).mean()
        assert agreement >= 0.999
    assert max(r.json()["batch_size"] for r in responses) > 1


def test_multipart_upload_and_png_body(
    client: httpx.Client, tiny_adapter: HFSegformerAdapter
) -> None:
    data = jpeg(220, 180, seed=3)
    multipart = client.post("/v1/segment", files={"image": ("photo.jpg", data, "image/jpeg")})
    assert multipart.status_code == 200, multipart.text
    as_png = client.post(
        "/v1/segment",
        content=data,
        headers={**JPEG, "Accept": "image/png"},
        params={"outputs": "classes"},
    )
    assert as_png.status_code == 200
    assert as_png.headers["content-type"] == "image/png"
    assert as_png.headers["x-segserve-model"] == "tiny"
    png_mask = decode_label_png(as_png.content)
    assert np.array_equal(png_mask, mask_of(multipart.json()))
    assert np.array_equal(png_mask, expected_labels(tiny_adapter, data))


def test_mask_size_model(client: httpx.Client) -> None:
    response = client.post(
        "/v1/segment", content=jpeg(1600, 800), headers=JPEG, params={"mask_size": "model"}
    )
    body = response.json()
    assert (body["width"], body["height"]) == (1600, 800)
    assert body["mask"]["width"] * body["mask"]["height"] <= 512 * 512
    assert mask_of(body).shape == (body["mask"]["height"], body["mask"]["width"])


def test_random_weights_are_announced_in_responses_and_models(client: httpx.Client) -> None:
    response = client.post(
        "/v1/segment", content=jpeg(64, 48), headers=JPEG, params={"model": "b0"}
    )
    body = response.json()
    assert body["model"] == "b0" and body["weights"] == "random"
    assert "random weights" in body["warning"]
    assert body["processed"] == {"width": 512, "height": 512}
    assert all(row["name"] for row in body["classes"])
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed["b0"]["weights"] == "random" and listed["tiny"]["weights"] == "pretrained"


def test_models_endpoints(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["default"] == "tiny"
    tiny = client.get("/v1/models/tiny").json()
    assert tiny["framework"] == "hf_segformer" and tiny["ready"] is True
    assert len(tiny["labels"]) == 150 and tiny["labels"][0] == "wall"
    assert tiny["batching"]["max_batch_size"] == 8
    assert tiny["replicas"] == {"RUNNING": 1}
    # Admission control: 32 running x 1 replica (one gateway) + 256 queued, none in flight.
    assert tiny["admission"] == {"in_flight": 0, "capacity": 32 + 256}
    assert tiny["device"]["kind"] == "cpu" and tiny["device"]["cpu_threads"] == 1
    # The replica's process started with the heap policy (Ray's runtime_env), and applied it.
    linux = sys.platform.startswith("linux")
    assert tiny["heap"] == {"retained": linux, "started_retained": True}
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_a_6000x4000_jpeg_gets_a_full_size_mask_and_bounded_replica_memory(
    client: httpx.Client,
) -> None:
    client.post("/v1/segment", content=jpeg(640, 480), headers=JPEG)  # warm
    before = client.get("/v1/models/tiny").json()
    response = client.post("/v1/segment", content=jpeg(6000, 4000), headers=JPEG)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["mask"]["width"], body["mask"]["height"]) == (6000, 4000)
    assert mask_of(body).shape == (4000, 6000)
    after = client.get("/v1/models/tiny").json()
    # The replica only ever sees the model's input size and returns a bounded label map.
    assert after["stats"]["largest_input_pixels"] <= 128 * 128
    # A replica that held the upload's 24 M pixels as RGB alone would grow by 72 MB
    # (and upsampling 150 classes of logits to it, by 14 GB); allocator noise stays below.
    assert after["peak_rss_mb"] - before["peak_rss_mb"] < 64


BAD_INPUTS = [
    ("empty body", b"", JPEG, {}, 400, "empty_body"),
    ("text", b"this is plain text, not an image", {"Content-Type": "text/plain"}, {}, 415, None),
    ("text as image", b"this is plain text, not an image", JPEG, {}, 415, "unsupported_image"),
    ("truncated jpeg", jpeg(400, 300)[:3000], JPEG, {}, 400, "corrupt_image"),
    ("png bomb", png_bomb(), PNG, {}, 413, "image_too_large"),
    ("over byte limit", b"\xff" * (MAX_REQUEST_BYTES + 1), JPEG, {}, 413, "payload_too_large"),
    ("unknown model", jpeg(64, 64), JPEG, {"model": "nope"}, 404, "unknown_model"),
    ("negative budget", jpeg(64, 64), JPEG, {"budget_ms": "-5"}, 422, "invalid_parameter"),
    ("zero budget", jpeg(64, 64), JPEG, {"budget_ms": "0"}, 422, "invalid_parameter"),
    ("absurd budget", jpeg(64, 64), JPEG, {"budget_ms": "1e12"}, 422, "invalid_parameter"),
    ("non-numeric budget", jpeg(64, 64), JPEG, {"budget_ms": "soon"}, 422, "invalid_parameter"),
    ("strict maybe", jpeg(64, 64), JPEG, {"strict": "maybe"}, 422, "invalid_parameter"),
    ("huge mask", jpeg(64, 64), JPEG, {"mask_size": "huge"}, 422, "invalid_parameter"),
    ("bad outputs", jpeg(64, 64), JPEG, {"outputs": "nope"}, 422, "invalid_parameter"),
    (
        "multipart without image",
        b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--b--\r\n',
        {"Content-Type": "multipart/form-data; boundary=b"},
        {},
        400,
        "malformed_request",
    ),
]


@pytest.mark.parametrize(
    ("data", "headers", "params", "status", "code"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_its_documented_status(
    client: httpx.Client,
    data: bytes,
    headers: dict[str, str],
    params: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    response = client.post("/v1/segment", content=data, headers=headers, params=params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and "Traceback" not in response.text
    if code:
        assert error["code"] == code


def test_service_still_answers_after_every_bad_input(client: httpx.Client) -> None:
    for _, data, headers, params, _, _ in BAD_INPUTS:
        client.post("/v1/segment", content=data, headers=headers, params=params)
    response = client.post("/v1/segment", content=jpeg(120, 90), headers=JPEG)
    assert response.status_code == 200 and response.json()["classes"]


def test_unknown_routes_and_methods_are_json_errors(client: httpx.Client) -> None:
    missing = client.get("/v1/whatever")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/v1/segment")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
