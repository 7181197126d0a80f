"""segserve's result on the wire: JSON (``/v1``) and protobuf (``segserve.v1``), both ways.

This is the one server module the clients import (with the generated stubs), so
it depends on nothing else in ``deployments``: the service builds a
:class:`SegmentResult`, the transports turn it into a body with :meth:`to_json`
or :meth:`to_proto`, and the clients read it back with :meth:`from_json` /
:meth:`from_proto`. The label PNG decoder and the metadata keys live here too.
The stubs are imported only for the protobuf forms, so the Ray-free pipeline runs
where protobuf is not installed (a bare GPU machine).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from deployments.protocols import segserve_pb2 as pb

#: Request metadata carrying the client's deadline as a budget. Ray Serve's gRPC proxy
#: does not pass the call deadline (``grpc-timeout``) on to the deployment, so the
#: clients send it here too; the proxy itself still cancels calls past their deadline.
BUDGET_METADATA_KEY = "segserve-budget-ms"
#: Trailing metadata key carrying the service's error code (``unknown_model``, ...).
ERROR_CODE_METADATA_KEY = "segserve-error-code"


@dataclass(frozen=True)
class ClassShare:
    """One row of the class table."""

    id: int
    name: str
    pixels: int
    fraction: float

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "pixels": self.pixels, "fraction": self.fraction}


@dataclass(frozen=True)
class Timings:
    """Where a request's time went, in milliseconds."""

    decode: float = 0.0
    #: Between sending to the model and its batch starting: transport and queueing.
    queue: float = 0.0
    inference: float = 0.0
    encode: float = 0.0
    total: float = 0.0
    #: Each output's share of ``encode`` (``{"contours": 12.5, "overlay": 40.1}``); in
    #: JSON it is ``encode_by_output_ms`` beside ``timings_ms``.
    encode_by_output: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float]:
        return {
            "decode": self.decode,
            "queue": self.queue,
            "inference": self.inference,
            "encode": self.encode,
            "total": self.total,
        }


@dataclass(frozen=True)
class Budget:
    """How the model was chosen and whether the request's budget held."""

    budget_ms: float | None = None
    predicted_ms: float = 0.0
    #: None without a budget.
    met: bool | None = None
    #: "default" | "budget" | "fastest" | "explicit"
    chosen_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_ms": self.budget_ms,
            "predicted_ms": self.predicted_ms,
            "met": self.met,
            "chosen_by": self.chosen_by,
        }


#: Overlay encodings and their media types.
OVERLAY_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}


@dataclass(frozen=True)
class Overlay:
    """The photo with its label map blended on top, encoded as PNG or JPEG."""

    format: str  # "png" | "jpeg"
    width: int
    height: int
    data: bytes = field(repr=False)

    @property
    def media_type(self) -> str:
        return OVERLAY_MEDIA_TYPES.get(self.format, "application/octet-stream")

    def save(self, path: str | Path) -> Path:
        """Write the picture to ``path``."""
        target = Path(path)
        target.write_bytes(self.data)
        return target

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "media_type": self.media_type,
            "width": self.width,
            "height": self.height,
            "data": base64.b64encode(self.data).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Overlay:
        return cls(
            format=str(body["format"]),
            width=int(body["width"]),
            height=int(body["height"]),
            data=base64.b64decode(body["data"]),
        )


def decode_label_png(data: bytes) -> np.ndarray:
    """A label PNG (8- or 16-bit greyscale, values are class ids) as a label map."""
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image)
        mode = image.mode
    return array.astype(np.uint8 if mode == "L" else np.uint16)


@dataclass
class SegmentResult:
    """One segmented image: what the service answers on every transport."""

    model: str
    weights: str  # "pretrained" | "random": of the replica that ran this request
    width: int
    height: int
    processed: tuple[int, int]
    classes: list[ClassShare] | None
    mask_png: bytes | None
    mask_size: tuple[int, int]
    timings: Timings
    batch_size: int
    budget: Budget = field(default_factory=Budget)
    #: Shown when the weights are random (say why), else None.
    warning: str | None = None
    #: ``outputs=contours``: per class present, largest first, ``{"id", "name", "area",
    #: "centroid": [x, y], "contours": [{"coordinates": [[x, y], ...], "centroid", "area"}]}``,
    #: every coordinate and area normalised to [0, 1] by the image's width and height.
    contours: list[dict[str, Any]] | None = None
    #: ``outputs=rle``: per class present, ``{"id", "name", "pixels", "size": [h, w],
    #: "counts"}``, COCO run-length encoding at the mask's size (``pycocotools.mask.decode``
    #: reads ``{"size", "counts"}``).
    rle: list[dict[str, Any]] | None = None
    #: ``outputs=overlay``: the photo with the classes drawn over it.
    overlay: Overlay | None = None
    #: The IMAGE preprocessor's segments (``protocols/image.py`` only; never serialised).
    segments: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)
    _labels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def labels(self) -> np.ndarray | None:
        """The label map (class id per pixel), decoded from the PNG on first use."""
        if self._labels is None and self.mask_png:
            self._labels = decode_label_png(self.mask_png)
        return self._labels

    def save_mask(self, path: str | Path) -> Path:
        """Write the label PNG to ``path``."""
        if not self.mask_png:
            raise ValueError("this result has no mask (outputs did not include 'mask')")
        target = Path(path)
        target.write_bytes(self.mask_png)
        return target

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """The HTTP JSON body (the mask as base64 PNG)."""
        body: dict[str, Any] = {
            "model": self.model,
            "weights": self.weights,
            "width": self.width,
            "height": self.height,
            "processed": {"width": self.processed[0], "height": self.processed[1]},
        }
        if self.warning:
            body["warning"] = self.warning
        if self.classes is not None:
            body["classes"] = [row.to_dict() for row in self.classes]
        if self.mask_png is not None:
            body["mask"] = {
                "format": "png",
                "width": self.mask_size[0],
                "height": self.mask_size[1],
                "data": base64.b64encode(self.mask_png).decode("ascii"),
            }
        if self.contours is not None:
            body["contours"] = self.contours
        if self.rle is not None:
            body["rle"] = self.rle
        if self.overlay is not None:
            body["overlay"] = self.overlay.to_dict()
        body["timings_ms"] = self.timings.to_dict()
        if self.timings.encode_by_output:
            body["encode_by_output_ms"] = dict(self.timings.encode_by_output)
        body["batch_size"] = self.batch_size
        body["budget"] = self.budget.to_dict()
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SegmentResult:
        mask = body.get("mask")
        classes = body.get("classes")
        budget = body.get("budget") or {}
        return cls(
            model=body["model"],
            weights=body["weights"],
            width=body["width"],
            height=body["height"],
            processed=(body["processed"]["width"], body["processed"]["height"]),
            classes=None if classes is None else [ClassShare(**row) for row in classes],
            mask_png=base64.b64decode(mask["data"]) if mask else None,
            mask_size=(mask["width"], mask["height"]) if mask else (0, 0),
            timings=Timings(
                **{k: float(v) for k, v in body["timings_ms"].items()},
                encode_by_output={
                    str(k): float(v) for k, v in (body.get("encode_by_output_ms") or {}).items()
                },
            ),
            batch_size=body["batch_size"],
            budget=Budget(
                budget_ms=budget.get("budget_ms"),
                predicted_ms=float(budget.get("predicted_ms") or 0.0),
                met=budget.get("met"),
                chosen_by=str(budget.get("chosen_by", "")),
            ),
            warning=body.get("warning"),
            contours=body.get("contours"),
            rle=body.get("rle"),
            overlay=Overlay.from_dict(body["overlay"]) if body.get("overlay") else None,
        )

    # ------------------------------------------------------------------ protobuf

    def to_proto(self) -> pb.SegmentResponse:
        from deployments.protocols.wire.proto import result_to_proto

        return result_to_proto(self)

    @classmethod
    def from_proto(cls, response: pb.SegmentResponse) -> SegmentResult:
        from deployments.protocols.wire.proto import result_from_proto

        return result_from_proto(cls, response)


def random_weights_warning(model: str, note: str | None) -> str:
    """The warning every response of a random-weights model carries."""
    return f"model {model!r} runs on random weights: {note or 'no pretrained weights loaded'}"


# ---------------------------------------------------------------------- model listings


def budget_from_metadata(metadata: Any) -> str | None:
    """The request's budget from call metadata, if the client sent its deadline."""
    for key, value in metadata or ():
        if str(key).lower() == BUDGET_METADATA_KEY:
            return str(value)
    return None
