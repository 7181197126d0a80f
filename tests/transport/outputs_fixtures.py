"""Builders for the outputs and IMAGE-route transport tests (fixtures live in the tests).

- :func:`outputs_app`: the gateway's HTTP app with the ``/v1`` and IMAGE routes over the
  tiny model cores.
- :class:`ScriptedEndpoint`: a model endpoint with the tiny model's card that answers a
  label map the test drew, so the IMAGE segment rules can be checked against known
  regions through the whole route (decode, routing, encode) with a real photo upload.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI

from deployments.config import GatewayConfig, LimitsConfig, ModelConfig, OutputsConfig
from deployments.contract import ModelCard, Prediction, PredictRequest
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.image_contract import CONTENT_CATEGORISER
from deployments.pipeline.imaging import resize_labels
from deployments.pipeline.service import SegmentationService
from deployments.protocols import http, image
from tests.transport.conftest import MAX_IMAGE_PIXELS, MAX_REQUEST_BYTES


def outputs_gateway(default: str = "tiny", **outputs: Any) -> GatewayConfig:
    limits = LimitsConfig(max_request_bytes=MAX_REQUEST_BYTES, max_image_pixels=MAX_IMAGE_PIXELS)
    return GatewayConfig(default_model=default, limits=limits, outputs=OutputsConfig(**outputs))


def tiny_service(cores: dict[str, ModelCore], **outputs: Any) -> SegmentationService:
    endpoints = {name: LocalEndpoint(core) for name, core in cores.items()}
    return SegmentationService(
        endpoints, [c.config for c in cores.values()], outputs_gateway(**outputs)
    )


def outputs_app(service: SegmentationService) -> FastAPI:
    return http.build_app(service, (http.register, image.register))


class ScriptedEndpoint:
    """A model that answers ``labels`` (nearest-neighbour resized to the label size asked)."""

    def __init__(self, card: ModelCard, labels: np.ndarray) -> None:
        self._card = card
        self.labels = labels
        self.label_sizes: list[tuple[int, int]] = []

    async def card(self) -> ModelCard:
        return self._card

    async def predict(self, request: PredictRequest) -> Prediction:
        self.label_sizes.append(request.label_size)
        width, height = request.label_size
        return Prediction(
            labels=resize_labels(self.labels, width, height),
            queue_ms=0.0,
            inference_ms=1.0,
            batch_size=1,
        )

    async def describe(self) -> dict[str, Any]:
        return {"name": self._card.name}

    async def ready(self) -> bool:
        return True


def scripted_service(
    core: ModelCore, labels: np.ndarray, label_max_pixels: int
) -> tuple[SegmentationService, ScriptedEndpoint]:
    """A service whose only model answers ``labels``, with the tiny model's input spec."""
    card = dataclasses.replace(core.card(), name="scripted")
    endpoint = ScriptedEndpoint(card, labels)
    config = ModelConfig(
        name="scripted",
        framework="hf_segformer",
        source=str(Path(core.config.source)),
        label_max_pixels=label_max_pixels,
    )
    return SegmentationService(
        {"scripted": endpoint}, [config], outputs_gateway("scripted")
    ), endpoint


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode("ascii")


def orchestrator_request(graphic: str | None, **changes: Any) -> dict[str, Any]:
    """A request as IMAGE's orchestrator sends it, with fields this preprocessor ignores;
    a change to ``...`` removes that field."""
    body: dict[str, Any] = {
        "request_uuid": str(uuid.uuid4()),
        "timestamp": 1_700_000_000,
        "graphic": graphic,
        "dimensions": [400, 300],
        "context": "",
        "language": "en",
        "capabilities": ["ca.mcgill.a11y.image.capability.DebugMode"],
        "renderers": ["ca.mcgill.a11y.image.renderer.Text"],
        "preprocessors": {
            CONTENT_CATEGORISER: {
                "categories": {"photo": True, "diagram": False, "illustration": False}
            }
        },
    }
    if graphic is None:
        del body["graphic"]
    body.update(changes)
    return {key: value for key, value in body.items() if value is not ...}
