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
import json
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
        body["timings_ms"] = self.timings.to_dict()
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
            timings=Timings(**{k: float(v) for k, v in body["timings_ms"].items()}),
            batch_size=body["batch_size"],
            budget=Budget(
                budget_ms=budget.get("budget_ms"),
                predicted_ms=float(budget.get("predicted_ms") or 0.0),
                met=budget.get("met"),
                chosen_by=str(budget.get("chosen_by", "")),
            ),
            warning=body.get("warning"),
        )

    # ------------------------------------------------------------------ protobuf

    def to_proto(self) -> pb.SegmentResponse:
        from deployments.protocols import segserve_pb2 as pb

        t = self.timings
        response = pb.SegmentResponse(
            model=self.model,
            weights=self.weights,
            size=pb.Size(width=self.width, height=self.height),
            processed=pb.Size(width=self.processed[0], height=self.processed[1]),
            mask_size=pb.Size(width=self.mask_size[0], height=self.mask_size[1]),
            timings=pb.Timings(
                decode_ms=t.decode,
                queue_ms=t.queue,
                inference_ms=t.inference,
                encode_ms=t.encode,
                total_ms=t.total,
            ),
            batch_size=self.batch_size,
        )
        response.budget.predicted_ms = self.budget.predicted_ms
        response.budget.chosen_by = self.budget.chosen_by
        if self.budget.budget_ms is not None:
            response.budget.budget_ms = self.budget.budget_ms
        if self.budget.met is not None:
            response.budget.met = self.budget.met
        if self.warning:
            response.warning = self.warning
        if self.classes is not None:
            response.classes.extend(
                pb.ClassShare(id=c.id, name=c.name, pixels=c.pixels, fraction=c.fraction)
                for c in self.classes
            )
        if self.mask_png is not None:
            response.mask_png = self.mask_png
        return response

    @classmethod
    def from_proto(cls, response: pb.SegmentResponse) -> SegmentResult:
        t = response.timings
        b = response.budget
        mask_png = bytes(response.mask_png) or None
        return cls(
            model=response.model,
            weights=response.weights,
            width=response.size.width,
            height=response.size.height,
            processed=(response.processed.width, response.processed.height),
            # proto3 cannot tell "not asked for" from "empty"; an image always has a class.
            classes=[
                ClassShare(id=c.id, name=c.name, pixels=c.pixels, fraction=c.fraction)
                for c in response.classes
            ]
            or None,
            mask_png=mask_png,
            mask_size=(response.mask_size.width, response.mask_size.height),
            timings=Timings(
                decode=t.decode_ms,
                queue=t.queue_ms,
                inference=t.inference_ms,
                encode=t.encode_ms,
                total=t.total_ms,
            ),
            batch_size=response.batch_size,
            budget=Budget(
                budget_ms=b.budget_ms if b.HasField("budget_ms") else None,
                predicted_ms=b.predicted_ms,
                met=b.met if b.HasField("met") else None,
                chosen_by=b.chosen_by,
            ),
            warning=response.warning or None,
        )


def random_weights_warning(model: str, note: str | None) -> str:
    """The warning every response of a random-weights model carries."""
    return f"model {model!r} runs on random weights: {note or 'no pretrained weights loaded'}"


# ---------------------------------------------------------------------- model listings


def model_info_to_proto(details: dict[str, Any]) -> pb.ModelInfo:
    from deployments.protocols import segserve_pb2 as pb

    return pb.ModelInfo(
        name=str(details.get("name", "")),
        framework=str(details.get("framework", "")),
        source=str(details.get("source", "")),
        weights=str(details.get("weights", details.get("weights_policy", ""))),
        ready=bool(details.get("ready", False)),
        labels=[str(label) for label in details.get("labels", [])],
        details_json=json.dumps(details, default=str),
    )


def models_from_proto(response: pb.ListModelsResponse) -> dict[str, Any]:
    """The ``/v1/models`` JSON shape from a ListModels answer."""
    return {
        "default": response.default_model,
        "models": [json.loads(m.details_json) for m in response.models],
    }


def budget_from_metadata(metadata: Any) -> str | None:
    """The request's budget from call metadata, if the client sent its deadline."""
    for key, value in metadata or ():
        if str(key).lower() == BUDGET_METADATA_KEY:
            return str(value)
    return None
