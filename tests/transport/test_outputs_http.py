"""The drawn outputs over HTTP: contours, RLE and overlay, their options and negotiation.

Every answer is checked against what the returned label map says (the model has
random weights, so the label map is the ground truth of each request): contours
equal OpenCV's on that map, RLE decodes back to it, the overlay's pixels are the
blend formula over the uploaded photo in the model's (ADE20K) palette.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as coco_mask

from deployments.adapters.labels import ADE20K
from deployments.model_core import ModelCore
from deployments.pipeline.contours import class_contours
from deployments.pipeline.imaging import fit_within, resize_labels
from deployments.pipeline.palette import ADE20K_PALETTE
from deployments.protocols.wire import SegmentResult
from tests.images import encode, jpeg, scene
from tests.transport.outputs_fixtures import outputs_app, tiny_service

RAW = {"Content-Type": "application/octet-stream"}
PHOTO = scene(96, 64, seed=3)
PHOTO_PNG = encode(PHOTO, "PNG")
ALL = "classes,mask,contours,rle,overlay"
# pycocotools' decode (the client side of the test) trips numpy 2's copy= deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def client(cores: dict[str, ModelCore]) -> Iterator[TestClient]:
    app = outputs_app(tiny_service(cores))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def small_overlays(cores: dict[str, ModelCore]) -> Iterator[TestClient]:
    """Overlays limited to 1/4 of the photo's pixels."""
    app = outputs_app(tiny_service(cores, overlay_max_pixels=96 * 64 // 4))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def segment(client: TestClient, data: bytes = PHOTO_PNG, **params: Any) -> dict[str, Any]:
    response = client.post("/v1/segment", content=data, headers=RAW, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def picture(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def blend(photo: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """The documented blend: (photo * (256 - A) + colour * A + 128) >> 8, A = round(256 alpha)."""
    weight = round(alpha * 256)
    colours = np.asarray(ADE20K_PALETTE, dtype=np.int64)[labels]
    blended: np.ndarray = (
        (photo.astype(np.int64) * (256 - weight) + colours * weight + 128) >> 8
    ).astype(np.uint8)
    return blended


def test_every_output_agrees_with_the_label_map(client: TestClient) -> None:
    body = segment(client, outputs=ALL, mask_size="model", overlay_format="png")
    result = SegmentResult.from_json(body)
    small = result.labels  # the server's own label map (mask_size=model)
    assert small is not None and small.shape[::-1] == result.mask_size
    # Contours: exactly OpenCV's on the returned map, normalised at the original size.
    expected = class_contours(small, ADE20K, original_size=(96, 64))
    assert result.contours == [c.to_dict() for c in expected]
    assert len(result.contours) == len(np.unique(small))
    for row in result.contours:
        assert set(row) == {"id", "name", "area", "centroid", "contours"}
        assert row["name"] == ADE20K[row["id"]]
        for contour in row["contours"]:
            xs, ys = zip(*contour["coordinates"], strict=True)
            assert all(0 < v < 1 for v in (*xs, *ys))
    # RLE: decodes to each class's mask at the mask's size, most pixels first.
    assert result.rle is not None
    assert [r["id"] for r in result.rle] == [
        c.id for c in sorted(result.classes or [], key=lambda c: (-c.pixels, c.id))
    ]
    for row in result.rle:
        decoded = coco_mask.decode({"size": row["size"], "counts": row["counts"].encode()})
        assert row["size"] == list(small.shape)
        assert np.array_equal(decoded.astype(bool), small == row["id"])
        assert row["pixels"] == int((small == row["id"]).sum())
    # Overlay: at the original size, the blend of the uploaded photo (alpha 0.5 default).
    overlay = result.overlay
    assert overlay is not None
    assert (overlay.format, overlay.media_type, overlay.width, overlay.height) == (
        "png",
        "image/png",
        96,
        64,
    )
    assert np.array_equal(picture(overlay.data), blend(PHOTO, resize_labels(small, 96, 64), 0.5))
    # Each output's encode time is reported.
    assert set(body["encode_by_output_ms"]) >= {
        "classes",
        "mask",
        "contours",
        "rle",
        "overlay",
    }


def test_default_outputs_are_unchanged(client: TestClient) -> None:
    body = segment(client)
    assert {"classes", "mask"} <= set(body)
    assert not {"contours", "rle", "overlay"} & set(body)


def test_rle_is_at_the_mask_size_asked_for(client: TestClient) -> None:
    result = SegmentResult.from_json(segment(client, outputs="rle,mask", mask_size="original"))
    assert result.rle and result.labels is not None
    assert all(r["size"] == [64, 96] for r in result.rle)
    assert sum(r["pixels"] for r in result.rle) == 96 * 64
    for row in result.rle:
        decoded = coco_mask.decode({"size": row["size"], "counts": row["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), result.labels == row["id"])


def test_contour_options(client: TestClient) -> None:
    everything = segment(client, outputs="contours,mask", mask_size="model")["contours"]
    contours = [c for row in everything for c in row["contours"]]
    assert len(everything) >= 3 and len(contours) >= 4
    # max_classes: the largest classes, as without it.
    two = segment(client, outputs="contours", max_classes="2")["contours"]
    assert two == everything[:2]
    # min_area: only contours at least that large; a class left with none is dropped.
    threshold = sorted(c["area"] for c in contours)[len(contours) // 2]
    large = segment(client, outputs="contours", min_area=str(threshold))["contours"]
    kept = [c for row in large for c in row["contours"]]
    assert kept and all(c["area"] >= threshold for c in kept)
    assert len(kept) == sum(1 for c in contours if c["area"] >= threshold)
    # simplify: fewer points, the same areas and centroids (of the exact contours).
    simple = segment(client, outputs="contours", simplify="3")["contours"]
    assert sum(len(c["coordinates"]) for row in simple for c in row["contours"]) < sum(
        len(c["coordinates"]) for c in contours
    )
    assert [[(c["area"], c["centroid"]) for c in row["contours"]] for row in simple] == [
        [(c["area"], c["centroid"]) for c in row["contours"]] for row in everything
    ]


def test_overlay_alpha_legend_and_format(client: TestClient) -> None:
    def overlay(**params: Any) -> SegmentResult:
        return SegmentResult.from_json(
            segment(client, outputs="overlay,mask", overlay_format="png", **params)
        )

    plain = overlay(alpha="0")
    assert plain.overlay is not None and np.array_equal(picture(plain.overlay.data), PHOTO)
    full = overlay(alpha="1")
    assert full.overlay is not None and full.labels is not None
    colours = np.asarray(ADE20K_PALETTE, dtype=np.uint8)[full.labels]
    assert np.array_equal(picture(full.overlay.data), colours)
    legend = overlay(alpha="0", legend="true")
    assert legend.overlay is not None
    drawn = picture(legend.overlay.data)
    changed = np.argwhere((drawn != PHOTO).any(axis=2))
    # The legend is a box in the top-left corner, black behind its swatches and names.
    assert len(changed) and changed[:, 0].min() == 0 and changed[:, 1].min() == 0
    assert (drawn[1, 1] == 0).all()
    # The configured default is JPEG.
    jpeg_result = SegmentResult.from_json(segment(client, outputs="overlay"))
    assert jpeg_result.overlay is not None
    assert jpeg_result.overlay.format == "jpeg" and jpeg_result.overlay.data[:2] == b"\xff\xd8"
    assert picture(jpeg_result.overlay.data).shape == (64, 96, 3)


def test_overlay_is_downscaled_to_the_configured_maximum(small_overlays: TestClient) -> None:
    body = segment(small_overlays, jpeg(96, 64), outputs="overlay", overlay_format="png")
    width, height = fit_within(96, 64, 96 * 64 // 4)
    assert (body["overlay"]["width"], body["overlay"]["height"]) == (width, height)
    data = base64.b64decode(body["overlay"]["data"])
    assert picture(data).shape == (height, width, 3)


def test_accept_png_with_overlay_is_the_picture(client: TestClient) -> None:
    response = client.post(
        "/v1/segment",
        content=PHOTO_PNG,
        headers={**RAW, "Accept": "image/png"},
        params={"outputs": "overlay", "alpha": "0"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-segserve-size"] == "96x64"
    assert np.array_equal(picture(response.content), PHOTO)
    # Without overlay, Accept: image/png is still the label PNG.
    mask = client.post("/v1/segment", content=PHOTO_PNG, headers={**RAW, "Accept": "image/png"})
    assert mask.status_code == 200
    with Image.open(io.BytesIO(mask.content)) as image:
        assert image.mode == "L" and image.size == (96, 64)
    conflicting = client.post(
        "/v1/segment",
        content=PHOTO_PNG,
        headers={**RAW, "Accept": "image/png"},
        params={"outputs": "overlay", "overlay_format": "jpeg"},
    )
    assert conflicting.status_code == 422


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"outputs": "contours,polygons"}, "'polygons'"),
        ({"outputs": "classes,overlays"}, "'overlays'"),
        ({"outputs": "image_segments"}, "'image_segments'"),
        ({"outputs": "contours", "min_area": "-0.1"}, "min_area must be between 0 and 1"),
        ({"outputs": "contours", "min_area": "2"}, "min_area must be between 0 and 1"),
        ({"outputs": "contours", "simplify": "nan"}, "simplify must be between"),
        ({"outputs": "contours", "max_classes": "0"}, "max_classes must be between 1"),
        ({"outputs": "contours", "max_classes": "two"}, "max_classes must be a whole number"),
        ({"outputs": "overlay", "alpha": "1.5"}, "alpha must be between 0 and 1, got 1.5"),
        ({"outputs": "overlay", "overlay_format": "gif"}, "overlay_format must be one of"),
        ({"outputs": "overlay", "legend": "maybe"}, "legend must be true or false"),
    ],
)
def test_unknown_outputs_and_bad_options_are_422(
    client: TestClient, params: dict[str, str], fragment: str
) -> None:
    response = client.post("/v1/segment", content=PHOTO_PNG, headers=RAW, params=params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and fragment in error["message"]


def test_the_cli_writes_each_output_beside_the_mask(client: TestClient, tmp_path: Path) -> None:
    import json

    from clients.cli import _write_outputs

    result = SegmentResult.from_json(segment(client, outputs=ALL))
    written = _write_outputs(Path("shop/photo.jpg"), result, tmp_path)
    assert written == {
        "mask": str(tmp_path / "photo.labels.png"),
        "overlay": str(tmp_path / "photo.overlay.jpg"),
        "contours": str(tmp_path / "photo.contours.json"),
        "rle": str(tmp_path / "photo.rle.json"),
    }
    assert json.loads((tmp_path / "photo.contours.json").read_text()) == result.contours
    assert json.loads((tmp_path / "photo.rle.json").read_text()) == result.rle
    assert picture((tmp_path / "photo.overlay.jpg").read_bytes()).shape == (64, 96, 3)
