"""The IMAGE project's semantic-segmentation preprocessor contract, transport-free.

IMAGE (Shared-Reality-Lab/IMAGE-server) runs preprocessors behind an
orchestrator that POSTs one JSON request to each and validates what comes back.
This module is that contract as pure functions, written from its documented
behaviour and its JSON schemas (IMAGE is AGPL-3.0: none of its code is used):

- :func:`parse_request` reads the fields the preprocessor uses (``request_uuid``,
  ``timestamp``, ``graphic``, ``dimensions``, ``preprocessors``) and returns an
  :class:`ImageRequest`, or :class:`NotApplicable` when the orchestrator should get
  an empty 204 (no ``graphic``, e.g. a map request; or the content categoriser
  says the graphic is not a photo). Malformed requests raise
  :class:`~deployments.pipeline.errors.MalformedRequest` (400), which the
  orchestrator, like every other caller, gets instead of a 500.
- :func:`build_response` turns a label map into the 200 body the orchestrator
  validates against ``preprocessors/segmentation.schema.json``, with the existing
  preprocessor's segment rules, computed at the original image size even when
  the label map is smaller.

The transport (HTTP route, header ``X-Request-ID``, status codes) lives in
``protocols/image.py``.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from deployments.pipeline.contours import (
    Contour,
    class_boxes,
    class_name,
    class_pixels,
    class_region_contours,
    contours_to_dicts,
)
from deployments.pipeline.errors import MalformedRequest, PayloadTooLarge

#: The name the orchestrator files this preprocessor's data under.
SEMANTIC_SEGMENTATION = "ca.mcgill.a11y.image.preprocessor.semanticSegmentation"
#: The content categoriser, whose earlier result may say the graphic is no photo.
CONTENT_CATEGORISER = "ca.mcgill.a11y.image.preprocessor.contentCategoriser"
#: IMAGE's request ids are UUID v4 (``definitions.json#/definitions/request_uuid``).
_UUID_V4 = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
)
#: ``data:image/<type>[;param=value]...;base64,<payload>``.
_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)((?:;[A-Za-z0-9.+-]+=[^;,]*)*);base64,")
#: Reverse-domain names, as the orchestrator's schema requires of a preprocessor name.
_PREPROCESSOR_NAME = re.compile(r"^[A-Za-z]{2,6}(\.((?!-)[A-Za-z0-9-]+(?<!-)))+$")


@dataclass(frozen=True)
class SegmentRules:
    """How segments are chosen; every field is configuration (``gateway.image``)."""

    #: The name the response is filed under.
    name: str
    #: Classes considered: this many with the most pixels.
    max_segments: int
    #: A contour is kept when it encloses at least this many pixels of the original image.
    min_contour_pixels: float
    #: A class is kept when its kept contours cover at least this fraction of the image.
    min_segment_fraction: float
    #: Content-categoriser categories this preprocessor applies to; when the
    #: categoriser has answered and says false to all of them, the answer is 204.
    categories: tuple[str, ...] = ("photo",)

    def __post_init__(self) -> None:
        if not _PREPROCESSOR_NAME.match(self.name):
            raise ValueError(f"{self.name!r} is not a reverse-domain preprocessor name")
        if self.max_segments < 1 or self.min_contour_pixels < 0:
            raise ValueError("max_segments must be positive and min_contour_pixels >= 0")
        if not 0.0 <= self.min_segment_fraction <= 1.0:
            raise ValueError("min_segment_fraction is a fraction of the image, 0..1")


#: The values of IMAGE's own ``mmsemseg`` preprocessor, for configuration to start from.
IMAGE_MMSEMSEG_RULES = SegmentRules(
    name=SEMANTIC_SEGMENTATION,
    max_segments=5,
    min_contour_pixels=2000,
    min_segment_fraction=0.05,
)


class _RequestFields(BaseModel):
    """The request fields this preprocessor reads; the orchestrator sends more."""

    model_config = ConfigDict(extra="ignore")

    # Strict: JSON has no "numbers as strings" here; a "12" uuid or a true timestamp is a bug.
    request_uuid: StrictStr
    timestamp: Annotated[StrictInt, Field(ge=0)] | None = None
    graphic: StrictStr | None = None
    dimensions: (
        tuple[Annotated[StrictInt, Field(gt=0)], Annotated[StrictInt, Field(gt=0)]] | None
    ) = None
    preprocessors: dict[str, Any] | None = None


@dataclass(frozen=True)
class ImageRequest:
    """A request this preprocessor answers: the image bytes and what to echo."""

    request_uuid: str
    image: bytes
    media_type: str
    timestamp: int | None = None
    #: (width, height) as the orchestrator reports it (the displayed size; the
    #: thresholds use the decoded image's own size instead).
    dimensions: tuple[int, int] | None = None
    preprocessors: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NotApplicable:
    """Not for this preprocessor: answer 204 with an empty body."""

    reason: str


def parse_request(
    body: object,
    *,
    rules: SegmentRules,
    max_image_bytes: int | None = None,
) -> ImageRequest | NotApplicable:
    """Validate an orchestrator request (already parsed from JSON).

    Raises :class:`MalformedRequest` for a body that is not an object, a missing or
    non-v4 ``request_uuid``, wrongly typed fields or a ``graphic`` that is not a
    base64 ``data:image/...`` URL (all checked before deciding on 204, as the
    orchestrator's schema is), and :class:`PayloadTooLarge` when the image would
    exceed ``max_image_bytes``. A missing ``preprocessors`` is no error.
    """
    if not isinstance(body, Mapping):
        raise MalformedRequest(
            "the request body must be a JSON object", code="invalid_preprocessor_request"
        )
    try:
        fields = _RequestFields.model_validate(dict(body))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}" for error in e.errors()
        )
        raise MalformedRequest(
            f"invalid IMAGE request: {problems}", code="invalid_preprocessor_request"
        ) from e
    if not _UUID_V4.match(fields.request_uuid):
        raise MalformedRequest(
            f"request_uuid must be a UUID v4, got {fields.request_uuid[:64]!r}",
            code="invalid_request_uuid",
        )
    preprocessors = fields.preprocessors or {}
    if fields.graphic is None:
        return NotApplicable("the request has no graphic")
    media_type, image = _decode_data_url(fields.graphic, max_image_bytes)
    refusal = _categoriser_refusal(preprocessors, rules.categories)
    if refusal is not None:
        return NotApplicable(refusal)
    return ImageRequest(
        request_uuid=fields.request_uuid,
        image=image,
        media_type=media_type,
        timestamp=fields.timestamp,
        dimensions=fields.dimensions,
        preprocessors=preprocessors,
    )


def _decode_data_url(url: str, max_bytes: int | None) -> tuple[str, bytes]:
    match = _DATA_URL.match(url)
    if match is None:
        raise MalformedRequest(
            "graphic must be a data URL of the form data:image/<type>;base64,<data>",
            code="invalid_graphic",
        )
    payload = url[match.end() :]
    if max_bytes is not None and len(payload) // 4 * 3 > max_bytes:
        raise PayloadTooLarge(
            f"the graphic holds about {len(payload) // 4 * 3} bytes; the limit is {max_bytes} bytes"
        )
    try:
        image = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedRequest(
            f"graphic's data is not valid base64: {e}", code="invalid_graphic"
        ) from e
    if not image:
        raise MalformedRequest("graphic's data is empty", code="invalid_graphic")
    return match.group(1).lower(), image


def _categoriser_refusal(preprocessors: Mapping[str, Any], categories: Sequence[str]) -> str | None:
    """Why the content categoriser's result rules this graphic out, if it does.

    Its current output is ``{"categories": {"photo": bool, ...}}``; its earlier one
    was ``{"category": "photograph" | ...}``, still honoured. An output in neither
    shape says nothing, and the graphic is processed (as when it is absent).
    """
    result = preprocessors.get(CONTENT_CATEGORISER)
    if not isinstance(result, Mapping):
        return None
    tags = result.get("categories")
    if isinstance(tags, Mapping):
        answers = [tags[name] for name in categories if isinstance(tags.get(name), bool)]
        if answers and not any(answers):
            return f"the content categoriser says the graphic is not: {', '.join(categories)}"
        return None
    legacy = result.get("category")
    if isinstance(legacy, str) and legacy != "photograph":
        return f"the content categoriser says the graphic is a {legacy!r}, not a photograph"
    return None


def build_response(
    request: ImageRequest,
    labels: np.ndarray,
    names: Sequence[str],
    original_size: tuple[int, int],
    *,
    rules: SegmentRules,
    now: float | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The 200 body: ``{request_uuid, timestamp, name, data: {segments, **extra}}``.

    ``labels`` is the server's label map (any size), ``original_size`` the decoded
    image's (width, height). ``extra`` adds keys at the ``data`` root only (e.g.
    ``model``, ``weights``); segment objects hold exactly ``name``, ``contours``,
    ``centroid`` and ``area``, since consumers forward them to text-to-speech.
    """
    if extra and "segments" in extra:
        raise ValueError("extra keys may not replace data.segments")
    data: dict[str, object] = {"segments": segments(labels, names, original_size, rules=rules)}
    data.update(extra or {})
    return {
        "request_uuid": request.request_uuid,
        "timestamp": int(time.time() if now is None else now),
        "name": rules.name,
        "data": data,
    }


def segments(
    labels: np.ndarray,
    names: Sequence[str],
    original_size: tuple[int, int],
    *,
    rules: SegmentRules,
) -> list[dict[str, object]]:
    """The segments the existing preprocessor reports, computed on the small map.

    Of the ``max_segments`` classes with the most pixels (at the original size;
    ties by id), each keeps its outer contours enclosing at least
    ``min_contour_pixels`` pixels of the original image, and is reported only if
    those cover at least ``min_segment_fraction`` of the image; its area is their
    sum and its centroid that of the largest. Coordinates are pixel centres (see
    :mod:`contours`); contours list every boundary pixel, as OpenCV returns them.
    """
    width, height = original_size
    if width < 1 or height < 1:
        raise ValueError(f"original size must be positive, got {original_size}")
    # Areas are fractions of the image, the same at the mask's size and the
    # original's: the pixel threshold becomes a fraction of the original.
    min_contour_area = rules.min_contour_pixels / (width * height)
    boxes = class_boxes(labels)
    result: list[dict[str, object]] = []
    for class_id in class_pixels(labels, width, height).ranked()[: rules.max_segments]:
        kept: list[Contour] = [
            contour
            for contour in class_region_contours(labels, class_id, boxes, dense=True)
            if contour.area > 0 and contour.area >= min_contour_area
        ]
        total = sum(contour.area for contour in kept)
        if not kept or total < rules.min_segment_fraction:
            continue
        largest = max(kept, key=lambda contour: contour.area).to_dict()
        result.append(
            {
                "name": class_name(names, class_id),
                "contours": contours_to_dicts(kept),
                "centroid": largest["centroid"],
                "area": min(1.0, round(total, 6)),
            }
        )
    return result
