"""segserve's result and model listings as protobuf (``segserve.v1``), both ways.

Imported only for the gRPC forms, so JSON-only users (and the Ray-free pipeline)
need no protobuf runtime.
"""

from __future__ import annotations

import json
from typing import Any

from deployments.protocols import segserve_pb2 as pb
from deployments.protocols.wire import (
    Budget,
    ClassShare,
    Overlay,
    SegmentResult,
    Timings,
)


def result_to_proto(self: SegmentResult) -> pb.SegmentResponse:
    """The gRPC form of a result."""
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
            encode_by_output_ms=t.encode_by_output,
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
    if self.contours is not None:
        response.contours.SetInParent()  # present even when no class has a contour
        response.contours.classes.extend(_class_contours_to_proto(c) for c in self.contours)
    if self.rle is not None:
        response.rle.SetInParent()
        response.rle.classes.extend(
            pb.ClassRle(
                id=r["id"],
                name=r["name"],
                pixels=r["pixels"],
                height=r["size"][0],
                width=r["size"][1],
                counts=r["counts"],
            )
            for r in self.rle
        )
    if self.overlay is not None:
        response.overlay.data = self.overlay.data
        response.overlay.format = self.overlay.format
        response.overlay.size.width = self.overlay.width
        response.overlay.size.height = self.overlay.height
    return response


def result_from_proto(cls: type[SegmentResult], response: pb.SegmentResponse) -> SegmentResult:
    """A result read back from its gRPC form."""
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
            encode_by_output=dict(t.encode_by_output_ms),
        ),
        batch_size=response.batch_size,
        budget=Budget(
            budget_ms=b.budget_ms if b.HasField("budget_ms") else None,
            predicted_ms=b.predicted_ms,
            met=b.met if b.HasField("met") else None,
            chosen_by=b.chosen_by,
        ),
        warning=response.warning or None,
        contours=(
            [_class_contours_from_proto(c) for c in response.contours.classes]
            if response.HasField("contours")
            else None
        ),
        rle=(
            [
                {
                    "id": r.id,
                    "name": r.name,
                    "pixels": r.pixels,
                    "size": [r.height, r.width],
                    "counts": r.counts,
                }
                for r in response.rle.classes
            ]
            if response.HasField("rle")
            else None
        ),
        overlay=(
            Overlay(
                format=response.overlay.format,
                width=response.overlay.size.width,
                height=response.overlay.size.height,
                data=bytes(response.overlay.data),
            )
            if response.HasField("overlay")
            else None
        ),
    )


def _contour_to_proto(contour: dict[str, Any]) -> pb.Contour:
    cx, cy = contour["centroid"]
    flat = [value for point in contour["coordinates"] for value in point]
    return pb.Contour(coordinates=flat, area=contour["area"], centroid=pb.Point(x=cx, y=cy))


def _class_contours_to_proto(row: dict[str, Any]) -> pb.ClassContours:
    cx, cy = row["centroid"]
    return pb.ClassContours(
        id=row["id"],
        name=row["name"],
        area=row["area"],
        centroid=pb.Point(x=cx, y=cy),
        contours=[_contour_to_proto(c) for c in row["contours"]],
    )


def _class_contours_from_proto(row: pb.ClassContours) -> dict[str, Any]:
    """The JSON form of one class's contours (the same dict ``to_json`` writes)."""
    return {
        "id": row.id,
        "name": row.name,
        "area": row.area,
        "centroid": [row.centroid.x, row.centroid.y],
        "contours": [
            {
                "coordinates": [
                    [c.coordinates[i], c.coordinates[i + 1]]
                    for i in range(0, len(c.coordinates), 2)
                ],
                "centroid": [c.centroid.x, c.centroid.y],
                "area": c.area,
            }
            for c in row.contours
        ],
    }


def model_info_to_proto(details: dict[str, Any]) -> pb.ModelInfo:
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
