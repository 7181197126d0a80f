"""The IMAGE preprocessor route, with requests built as IMAGE's orchestrator sends them.

Status and body of every case the orchestrator distinguishes (200 validated
against its schemas, 204 with an empty body, errors as 4xx/503 and never 500),
and the segment rules through the whole route on a drawn label map: the
2000-pixel and 5 % thresholds hold at the original size although the label map
is 1/10 of it per side.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import numpy as np
import pytest
from fastapi.testclient import TestClient

from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.errors import NotReady
from deployments.pipeline.image_contract import CONTENT_CATEGORISER, SEMANTIC_SEGMENTATION
from deployments.pipeline.service import SegmentationService
from tests.images import encode, scene
from tests.transport.conftest import MAX_REQUEST_BYTES, FailingEndpoint
from tests.transport.outputs_fixtures import (
    ScriptedEndpoint,
    data_url,
    orchestrator_request,
    outputs_app,
    outputs_gateway,
    scripted_service,
    tiny_service,
)
from tests.unit.test_image_contract import RESPONSE_SCHEMA

PHOTO = data_url(encode(scene(400, 300, seed=7), "JPEG", quality=90), "image/jpeg")
_PNG = encode(scene(64, 48, seed=2), "PNG")
#: A PNG cut in half: its header reads, its pixels do not.
TRUNCATED_PNG = _PNG[: len(_PNG) // 2]
HEADERS = {"Content-Type": "application/json", "X-Request-ID": "req-42"}


@pytest.fixture(scope="module")
def client(cores: dict[str, ModelCore]) -> Iterator[TestClient]:
    with TestClient(outputs_app(tiny_service(cores)), raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, body: object) -> Any:
    return client.post("/preprocessor", json=body, headers=HEADERS)


# ------------------------------------------------------------ the orchestrator's cases


def test_a_photo_gets_segments_the_orchestrator_accepts(client: TestClient) -> None:
    request = orchestrator_request(PHOTO)
    before = int(time.time())
    response = post(client, request)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-42"
    body = response.json()
    jsonschema.validate(body, RESPONSE_SCHEMA)
    assert body["request_uuid"] == request["request_uuid"]
    assert body["name"] == SEMANTIC_SEGMENTATION
    assert before <= body["timestamp"] <= int(time.time()) + 1
    assert body["data"]["model"] == "tiny" and body["data"]["weights"] == "pretrained"
    segments = body["data"]["segments"]
    assert 1 <= len(segments) <= 5
    for segment in segments:
        assert segment["area"] >= 0.05
        assert all(c["area"] >= 2000 / (400 * 300) for c in segment["contours"])


def test_missing_preprocessors_is_no_error(client: TestClient) -> None:
    response = post(client, orchestrator_request(PHOTO, preprocessors=...))
    assert response.status_code == 200, response.text
    jsonschema.validate(response.json(), RESPONSE_SCHEMA)


@pytest.mark.parametrize(
    ("photo", "status"), [(True, 200), (False, 204)], ids=["photo", "not-a-photo"]
)
def test_the_content_categoriser_decides(client: TestClient, photo: bool, status: int) -> None:
    categories = {"photo": photo, "diagram": not photo, "illustration": False}
    request = orchestrator_request(
        PHOTO, preprocessors={CONTENT_CATEGORISER: {"categories": categories}}
    )
    response = post(client, request)
    assert response.status_code == status, response.text
    if status == 204:
        assert response.content == b""


def test_no_graphic_is_204_with_an_empty_body(client: TestClient) -> None:
    # A map request: coordinates and no graphic.
    request = orchestrator_request(None, coordinates={"latitude": 45.5, "longitude": -73.6})
    response = post(client, request)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["x-request-id"] == "req-42"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (orchestrator_request(PHOTO, request_uuid="not-a-uuid"), 400, "invalid_request_uuid"),
        (orchestrator_request(PHOTO, request_uuid=...), 400, "invalid_preprocessor_request"),
        (orchestrator_request("https://example.com/cat.jpg"), 400, "invalid_graphic"),
        (orchestrator_request("data:image/png;base64,@@@not-base64@@@"), 400, "invalid_graphic"),
        (orchestrator_request(data_url(TRUNCATED_PNG)), 400, "corrupt_image"),
        (orchestrator_request(data_url(b"plain text, not an image")), 415, "unsupported_image"),
        (["a", "list"], 400, "invalid_preprocessor_request"),
    ],
    ids=["bad-uuid", "no-uuid", "not-a-data-url", "bad-base64", "corrupt", "not-image", "list"],
)
def test_bad_requests_are_client_errors(
    client: TestClient, body: object, status: int, code: str
) -> None:
    response = post(client, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_a_body_that_is_not_json_is_400(client: TestClient) -> None:
    response = client.post("/preprocessor", content=b"{not json", headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_preprocessor_request"


def test_an_image_over_the_limit_is_413(client: TestClient) -> None:
    too_big = data_url(b"\x00" * (MAX_REQUEST_BYTES + 1024))
    response = post(client, orchestrator_request(too_big))
    assert response.status_code == 413


def test_a_model_not_ready_is_503(cores: dict[str, ModelCore]) -> None:
    gone = FailingEndpoint(LocalEndpoint(cores["tiny"]), NotReady("no replica right now"))
    service = SegmentationService({"tiny": gone}, [cores["tiny"].config], outputs_gateway())
    with TestClient(outputs_app(service), raise_server_exceptions=False) as c:
        response = post(c, orchestrator_request(PHOTO))
        warmup = c.get("/warmup")
        health = c.get("/health")
    assert response.status_code == 503
    assert warmup.status_code == 503
    assert health.status_code == 200  # liveness, as the container it replaces


def test_health_and_warmup(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    warmup = client.get("/warmup")
    assert warmup.status_code == 200, warmup.text
    assert warmup.json()["model"] == "tiny"


# ------------------------------------------------------------ the segment rules

W, H = 40, 30  # the label map of a 400x300 or 800x600 photo at label_max_pixels=1200


def drawn_labels() -> np.ndarray:
    """Blocks whose contours enclose (w-1)(h-1) label pixels (through pixel centres).

    At 400x300 each label pixel is 100 photo pixels, so 2000 photo pixels are 20
    label pixels and 5 % of the image is 60; at 800x600 a label pixel is 400.
    """
    labels = np.zeros((H, W), np.uint8)

    def block(class_id: int, x: int, y: int, w: int, h: int) -> None:
        labels[y : y + h, x : x + w] = class_id

    block(1, 1, 1, 11, 9)  # building: encloses 80 (6.7 %): kept at both sizes
    for x in (14, 20, 26):
        block(2, x, 1, 5, 5)  # sky: 16 each (1600 px at 400x300), 4 % in all: never kept
    block(4, 1, 12, 7, 6)  # tree: 30
    block(4, 10, 12, 6, 5)  # tree: 20, exactly 2000 px at 400x300: kept
    block(4, 18, 12, 5, 5)  # tree: 16: dropped at 400x300 (tree: 4.2 %), kept at 800x600 (5.5 %)
    block(5, 1, 20, 8, 7)  # ceiling: 42
    block(5, 12, 20, 6, 5)  # ceiling: 20; 62 in all (5.2 %): kept at both sizes
    return labels


@pytest.fixture(scope="module")
def scripted(cores: dict[str, ModelCore]) -> Iterator[tuple[TestClient, ScriptedEndpoint]]:
    service, endpoint = scripted_service(cores["tiny"], drawn_labels(), label_max_pixels=W * H)
    with TestClient(outputs_app(service), raise_server_exceptions=False) as c:
        yield c, endpoint


def segments_for(
    scripted: tuple[TestClient, ScriptedEndpoint], width: int, height: int
) -> list[dict[str, Any]]:
    client, endpoint = scripted
    photo = data_url(encode(scene(width, height), "PNG"))
    response = post(client, orchestrator_request(photo, dimensions=[width, height]))
    assert response.status_code == 200, response.text
    assert endpoint.label_sizes[-1] == (W, H)  # the mask is downscaled 10x or 20x per side
    body = response.json()
    jsonschema.validate(body, RESPONSE_SCHEMA)
    segments: list[dict[str, Any]] = body["data"]["segments"]
    return segments


def test_thresholds_hold_at_the_original_size(
    scripted: tuple[TestClient, ScriptedEndpoint],
) -> None:
    segments = segments_for(scripted, 400, 300)
    assert [s["name"] for s in segments] == ["wall", "building", "ceiling"]
    wall, building, ceiling = segments
    assert wall["area"] == pytest.approx(39 * 29 / 1200, abs=1e-6)
    assert wall["centroid"] == pytest.approx([0.5, 0.5], abs=1e-6)
    assert len(building["contours"]) == 1
    assert building["area"] == pytest.approx(80 / 1200, abs=1e-6)
    assert building["centroid"] == pytest.approx([6.5 / W, 5.5 / H], abs=1e-6)
    # Ceiling: both contours kept; its area their sum, its centroid the larger one's.
    assert len(ceiling["contours"]) == 2
    assert ceiling["area"] == pytest.approx(62 / 1200, abs=1e-6)
    assert ceiling["centroid"] == pytest.approx([5.0 / W, 23.5 / H], abs=1e-6)
    for segment in segments:
        assert set(segment) == {"name", "contours", "centroid", "area"}


def test_a_larger_original_keeps_smaller_regions(
    scripted: tuple[TestClient, ScriptedEndpoint],
) -> None:
    # The same label map for a photo twice as large: 16 label pixels are 6400 photo
    # pixels now, so the tree's third region counts and the tree passes 5 %.
    segments = segments_for(scripted, 800, 600)
    assert [s["name"] for s in segments] == ["wall", "building", "tree", "ceiling"]
    tree = segments[2]
    assert len(tree["contours"]) == 3
    assert tree["area"] == pytest.approx(66 / 1200, abs=1e-6)
    assert tree["centroid"] == pytest.approx([(1 + 3 + 0.5) / W, (12 + 2.5 + 0.5) / H], abs=1e-6)
    sky_pixels = 3 * 16 * 400
    assert sky_pixels >= 2000 and 3 * 16 / 1200 < 0.05  # sky's regions count but sum to 4 %
    assert "sky" not in [s["name"] for s in segments]


def test_the_data_url_carries_the_image_unchanged(client: TestClient) -> None:
    # A graphic whose base64 has no padding issues and a media-type parameter.
    raw = encode(scene(64, 48), "PNG")
    url = "data:image/png;charset=binary;base64," + base64.b64encode(raw).decode("ascii")
    response = post(client, orchestrator_request(url))
    assert response.status_code == 200, response.text
