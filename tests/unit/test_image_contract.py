"""The IMAGE preprocessor contract: request rules, 204 cases and the segment rules."""

from __future__ import annotations

import base64
import io
import json
import uuid
from typing import Any

import jsonschema
import numpy as np
import pytest
from PIL import Image

from deployments.pipeline.errors import ErrorKind, MalformedRequest, PayloadTooLarge
from deployments.pipeline.image_contract import (
    CONTENT_CATEGORISER,
    IMAGE_MMSEMSEG_RULES,
    SEMANTIC_SEGMENTATION,
    ImageRequest,
    NotApplicable,
    SegmentRules,
    build_response,
    parse_request,
)

RULES = SegmentRules(
    name=SEMANTIC_SEGMENTATION, max_segments=5, min_contour_pixels=2000, min_segment_fraction=0.05
)
NAMES = [f"class{i}" for i in range(10)]

# What the orchestrator checks of a 200 body, written from IMAGE's schemas
# (preprocessor-response.schema.json, definitions.json and
# preprocessors/segmentation.schema.json; AGPL, so not copied), tightened where
# the issue is stricter: no keys inside segments or contours beyond these.
_PAIR = {
    "type": "array",
    "items": {"type": "number", "minimum": 0, "maximum": 1},
    "minItems": 2,
    "maxItems": 2,
}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["request_uuid", "timestamp", "name", "data"],
    "properties": {
        "request_uuid": {
            "type": "string",
            "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-"
            "[0-9a-fA-F]{12}$",
        },
        "timestamp": {"type": "integer", "minimum": 0},
        "name": {"type": "string", "pattern": r"^[A-Za-z]{2,6}(\.((?!-)[A-Za-z0-9-]+(?<!-)))+$"},
        "data": {
            "type": "object",
            "required": ["segments"],
            "properties": {
                "segments": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "contours", "centroid", "area"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "centroid": _PAIR,
                            "area": _FRACTION,
                            "contours": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["coordinates", "centroid", "area"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "coordinates": {"type": "array", "items": _PAIR},
                                        "centroid": _PAIR,
                                        "area": _FRACTION,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def png_data_url(width: int = 32, height: int = 24) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def request_body(**changes: Any) -> dict[str, Any]:
    """A request as the orchestrator sends it (with fields this preprocessor ignores)."""
    body: dict[str, Any] = {
        "request_uuid": str(uuid.uuid4()),
        "timestamp": 1_700_000_000,
        "graphic": png_data_url(),
        "dimensions": [32, 24],
        "context": "",
        "language": "en",
        "capabilities": [],
        "renderers": ["ca.mcgill.a11y.image.renderer.Text"],
        "preprocessors": {
            CONTENT_CATEGORISER: {
                "categories": {"photo": True, "diagram": False, "illustration": False}
            }
        },
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not ...}


def parsed(**changes: Any) -> ImageRequest:
    result = parse_request(request_body(**changes), rules=RULES)
    assert isinstance(result, ImageRequest)
    return result


# ----------------------------------------------------------------- requests


def test_a_photo_request_yields_its_image_and_what_to_echo() -> None:
    body = request_body()
    request = parse_request(body, rules=RULES)
    assert isinstance(request, ImageRequest)
    assert request.request_uuid == body["request_uuid"]
    assert request.media_type == "image/png"
    with Image.open(io.BytesIO(request.image)) as image:
        assert image.size == (32, 24)
    assert request.dimensions == (32, 24)
    assert request.timestamp == 1_700_000_000


def test_no_graphic_is_not_applicable() -> None:
    result = parse_request(request_body(graphic=...), rules=RULES)
    assert isinstance(result, NotApplicable)
    assert "graphic" in result.reason


@pytest.mark.parametrize(
    "categoriser",
    [
        {"categories": {"photo": False, "diagram": True}},
        {"category": "chart"},  # the categoriser's earlier output
    ],
)
def test_categoriser_saying_not_a_photo_is_not_applicable(categoriser: dict[str, Any]) -> None:
    result = parse_request(
        request_body(preprocessors={CONTENT_CATEGORISER: categoriser}), rules=RULES
    )
    assert isinstance(result, NotApplicable)
    assert "categoriser" in result.reason


@pytest.mark.parametrize(
    "preprocessors",
    [
        ...,  # no preprocessors at all
        None,
        {},
        {CONTENT_CATEGORISER: {"categories": {"photo": True}}},
        {CONTENT_CATEGORISER: {"category": "photograph"}},
        {CONTENT_CATEGORISER: {"categories": {"diagram": False}}},  # says nothing of photos
        {"ca.mcgill.a11y.image.preprocessor.graphicTagger": {"category": "indoor"}},
    ],
)
def test_photo_or_no_categoriser_verdict_is_processed(preprocessors: Any) -> None:
    assert isinstance(parse_request(request_body(preprocessors=preprocessors), rules=RULES),
                      ImageRequest)  # fmt: skip


def test_configured_categories_widen_what_is_processed() -> None:
    rules = SegmentRules(
        name=SEMANTIC_SEGMENTATION,
        max_segments=5,
        min_contour_pixels=2000,
        min_segment_fraction=0.05,
        categories=("photo", "illustration"),
    )
    tags = {"categories": {"photo": False, "illustration": True}}
    body = request_body(preprocessors={CONTENT_CATEGORISER: tags})
    assert isinstance(parse_request(body, rules=rules), ImageRequest)
    assert isinstance(parse_request(body, rules=RULES), NotApplicable)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"request_uuid": ...}, "invalid_preprocessor_request"),
        ({"request_uuid": 12}, "invalid_preprocessor_request"),
        ({"request_uuid": "not-a-uuid"}, "invalid_request_uuid"),
        ({"request_uuid": str(uuid.uuid1())}, "invalid_request_uuid"),  # IMAGE's ids are v4
        ({"timestamp": "yesterday"}, "invalid_preprocessor_request"),
        ({"dimensions": [0, 10]}, "invalid_preprocessor_request"),
        ({"preprocessors": []}, "invalid_preprocessor_request"),
        ({"graphic": 42}, "invalid_preprocessor_request"),
        ({"graphic": "http://example.com/cat.jpg"}, "invalid_graphic"),
        ({"graphic": "data:text/plain;base64,aGVsbG8="}, "invalid_graphic"),
        ({"graphic": "data:image/png,rawbytes"}, "invalid_graphic"),
        ({"graphic": "data:image/png;base64,not base64!"}, "invalid_graphic"),
        ({"graphic": "data:image/png;base64,abc"}, "invalid_graphic"),  # bad padding
        ({"graphic": "data:image/png;base64,"}, "invalid_graphic"),
    ],
)
def test_bad_requests_are_400(changes: dict[str, Any], code: str) -> None:
    with pytest.raises(MalformedRequest) as caught:
        parse_request(request_body(**changes), rules=RULES)
    assert caught.value.code == code
    assert caught.value.kind is ErrorKind.MALFORMED
    assert caught.value.kind.http_status == 400


def test_a_bad_request_is_400_even_when_it_would_not_apply() -> None:
    # The orchestrator's schema is checked first: a bad id is reported, not skipped.
    with pytest.raises(MalformedRequest):
        parse_request(request_body(graphic=..., request_uuid="nope"), rules=RULES)


@pytest.mark.parametrize("body", [[], "text", None, 3])
def test_a_body_that_is_not_an_object_is_400(body: object) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(body, rules=RULES)


def test_an_oversized_graphic_is_413_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_request(request_body(), rules=RULES, max_image_bytes=50)


# ---------------------------------------------------------------- responses


def respond(labels: np.ndarray, original: tuple[int, int], **kwargs: Any) -> dict[str, Any]:
    response = build_response(parsed(), labels, NAMES, original, rules=RULES, **kwargs)
    jsonschema.validate(response, RESPONSE_SCHEMA)
    assert json.loads(json.dumps(response)) == response  # plain JSON numbers and lists
    return response


def segment_names(response: dict[str, Any]) -> list[str]:
    return [segment["name"] for segment in response["data"]["segments"]]


def test_response_echoes_the_request_and_names_the_preprocessor() -> None:
    request = parsed()
    labels = np.zeros((100, 200), np.uint8)
    labels[:, 100:] = 1
    response: dict[str, Any] = build_response(
        request, labels, NAMES, (200, 100), rules=RULES, now=1_800_000_000.7,
        extra={"model": "segformer-b0", "weights": "pretrained"},
    )  # fmt: skip
    jsonschema.validate(response, RESPONSE_SCHEMA)
    assert response["request_uuid"] == request.request_uuid
    assert response["timestamp"] == 1_800_000_000
    assert response["name"] == "ca.mcgill.a11y.image.preprocessor.semanticSegmentation"
    assert response["data"]["model"] == "segformer-b0"  # extras at the data root only
    assert segment_names(response) == ["class0", "class1"]
    left = response["data"]["segments"][0]
    (contour,) = left["contours"]
    # Dense, as OpenCV returns contours to IMAGE: every boundary pixel of a 100 x 100 block.
    assert len(contour["coordinates"]) == 4 * 99
    assert contour["area"] == pytest.approx(99 * 99 / 20000)
    assert left["area"] == contour["area"]
    assert left["centroid"] == pytest.approx([0.25, 0.5])


def test_only_the_five_largest_classes_are_considered() -> None:
    labels = np.zeros((100, 700), np.uint8)
    for class_id in range(7):  # class i: 100 columns wide minus i (sizes all differ)
        labels[:, class_id * 100 : (class_id + 1) * 100 - class_id] = class_id
    response = respond(labels, (700, 100))
    assert segment_names(response) == ["class0", "class1", "class2", "class3", "class4"]


def test_contour_and_class_thresholds_are_at_the_original_size() -> None:
    # The label map is a tenth of the original on each side: 1 mask pixel is 100.
    labels = np.zeros((100, 200), np.uint8)
    labels[10:55, 10:55] = 1  # encloses 44 x 44 = 1936 mask px = 193,600 original px: 9.7 %
    labels[70:76, 100:106] = 1  # 5 x 5 = 2,500 original px: kept (>= 2000), 25 mask px
    labels[80:85, 150:155] = 1  # 4 x 4 = 1,600 original px: dropped
    labels[0:40, 140:200] = 2  # 39 x 59 = 2301 mask px = 11.5 % of the image: kept
    labels[90:95, 10:40] = 3  # 4 x 29 = 116 mask px = 0.58 %: under 5 %, dropped
    for x in range(0, 60, 6):  # class 4: ten 5x5 squares, 2,500 original px each ...
        labels[64:69, 70 + x : 75 + x] = 4  # ... 1.25 % of the image in all: dropped
    response = respond(labels, (2000, 1000))
    segments = {s["name"]: s for s in response["data"]["segments"]}
    assert set(segments) == {"class0", "class1", "class2"}
    areas = sorted(c["area"] for c in segments["class1"]["contours"])
    assert areas == pytest.approx([25 / 20000, 44 * 44 / 20000])
    assert segments["class1"]["area"] == pytest.approx((25 + 44 * 44) / 20000)
    # The segment's centroid is its largest contour's.
    assert segments["class1"]["centroid"] == pytest.approx([0.1625, 0.325])
    # At the mask's own size (1 px = 1 px) every contour of class 1 is under 2000 pixels.
    assert "class1" not in segment_names(respond(labels, (200, 100)))


def test_the_five_percent_rule_counts_only_kept_contours() -> None:
    labels = np.zeros((100, 100), np.uint8)
    labels[0:23, 0:23] = 1  # encloses 22 x 22 mask px: 4.84 % of the image
    labels[50:55, 50:55] = 1  # 4 x 4 mask px each: 1,600 px of a 1000x1000 original, 0.16 % ...
    labels[70:75, 70:75] = 1  # ... so dropped; counted, they would make 5.16 %
    assert "class1" not in segment_names(respond(labels, (1000, 1000)))
    labels[0:24, 0:24] = 1  # 23 x 23 mask px: 5.29 %
    segment = next(
        s for s in respond(labels, (1000, 1000))["data"]["segments"] if s["name"] == "class1"
    )
    assert len(segment["contours"]) == 1
    assert segment["area"] == pytest.approx(0.0529)


def test_one_pixel_and_empty_cases() -> None:
    labels = np.zeros((50, 50), np.uint8)
    labels[0, 0] = 1  # a one-pixel class encloses nothing
    assert segment_names(respond(labels, (5000, 5000))) == ["class0"]
    tiny = np.zeros((1, 1), np.uint8)
    assert respond(tiny, (1, 1))["data"]["segments"] == []


def test_existing_preprocessor_values_are_offered() -> None:
    assert IMAGE_MMSEMSEG_RULES == RULES


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "not a name"},
        {"max_segments": 0},
        {"min_segment_fraction": 1.5},
    ],
)
def test_rules_are_checked(kwargs: dict[str, Any]) -> None:
    values: dict[str, Any] = {
        "name": SEMANTIC_SEGMENTATION,
        "max_segments": 5,
        "min_contour_pixels": 2000,
        "min_segment_fraction": 0.05,
    }
    with pytest.raises(ValueError):  # noqa: PT011 - each is a different misconfiguration
        SegmentRules(**{**values, **kwargs})


def test_a_data_url_of_corrupt_image_bytes_is_400_at_decode() -> None:
    from deployments.config import LimitsConfig
    from deployments.pipeline.errors import CorruptImage
    from deployments.pipeline.imaging import InputSpec, decode_image

    good = base64.b64decode(png_data_url().split(",", 1)[1])
    truncated = "data:image/png;base64," + base64.b64encode(good[: len(good) // 2]).decode()
    request = parsed(graphic=truncated)  # well-formed request: the bytes are the problem
    with pytest.raises(CorruptImage) as caught:
        decode_image(request.image, InputSpec(size=(16, 16)), LimitsConfig().image_limits())
    assert caught.value.kind.http_status == 400
