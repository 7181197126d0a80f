"""Conversions between the pipeline's types and the segserve.v1 protobuf messages."""

from __future__ import annotations

import json
from typing import Any

from deployments.pipeline.service import SegmentResult
from deployments.protocols import segserve_pb2 as pb

#: Call metadata carrying the client's deadline as a budget. Ray Serve's gRPC proxy
#: does not pass the call deadline (``grpc-timeout``) on to the deployment, so the
#: clients send it here too; the proxy itself still cancels calls past their deadline.
BUDGET_METADATA_KEY = "segserve-budget-ms"
#: Trailing metadata key carrying the service's error code (``unknown_model``, ...).
ERROR_CODE_METADATA_KEY = "segserve-error-code"


def segment_response(result: SegmentResult) -> pb.SegmentResponse:
    timings = result.timings_ms
    response = pb.SegmentResponse(
        model=result.model,
        weights=result.weights,
        size=pb.Size(width=result.width, height=result.height),
        processed=pb.Size(width=result.processed[0], height=result.processed[1]),
        mask_size=pb.Size(width=result.mask_size[0], height=result.mask_size[1]),
        timings=pb.Timings(
            decode_ms=timings["decode"],
            queue_ms=timings["queue"],
            inference_ms=timings["inference"],
            encode_ms=timings["encode"],
            total_ms=timings["total"],
        ),
        batch_size=result.batch_size,
    )
    budget = result.budget
    if budget:
        response.budget.predicted_ms = float(budget.get("predicted_ms") or 0.0)
        response.budget.chosen_by = str(budget.get("chosen_by", ""))
        if budget.get("budget_ms") is not None:
            response.budget.budget_ms = float(budget["budget_ms"])
        if budget.get("met") is not None:
            response.budget.met = bool(budget["met"])
    if result.weights == "random":
        response.warning = f"model {result.model!r} runs on random weights: {result.weights_note}"
    if result.classes is not None:
        response.classes.extend(
            pb.ClassShare(id=c.id, name=c.name, pixels=c.pixels, fraction=c.fraction)
            for c in result.classes
        )
    if result.mask_png is not None:
        response.mask_png = result.mask_png
    return response


def model_info(details: dict[str, Any]) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=str(details.get("name", "")),
        framework=str(details.get("framework", "")),
        source=str(details.get("source", "")),
        weights=str(details.get("weights", details.get("weights_policy", ""))),
        ready=bool(details.get("ready", False)),
        labels=[str(label) for label in details.get("labels", [])],
        details_json=json.dumps(details, default=str),
    )


def budget_from_metadata(metadata: list[tuple[str, str]]) -> str | None:
    """The request's budget from call metadata, if the client sent its deadline."""
    for key, value in metadata:
        if key.lower() == BUDGET_METADATA_KEY:
            return value
    return None
