"""The types that cross the gateway <-> model replica boundary, and nothing else.

Both sides import this module; it imports only the image spec, so a model replica
never loads the router, the latency fits or the encoders to receive a request.

- :class:`ModelCard`: facts only the replica knows (what its adapter loaded):
  the input spec, labels, weights and the warm-up timings. What the operator
  configured (quality, batching, replicas) the gateway reads from its config.
- :class:`PredictRequest`: an image at the model's input size with a *relative*
  budget (ms left when the gateway sent it). The replica turns it into a deadline
  on its own clock when the request arrives, so clock skew between nodes cannot
  move the expiry decision (gRPC's ``grpc-timeout`` is relative for this reason).
- :class:`Prediction`: the label map, with the weights tag of the replica that
  ran it (replicas of one model may serve different weights with ``weights: auto``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from deployments.pipeline.imaging import InputSpec


@dataclass(frozen=True)
class LatencySample:
    """One observed batch (or request): its cost in pixels and how long it took."""

    pixels: float
    ms: float


@dataclass(frozen=True)
class ModelCard:
    """What a replica's adapter loaded: the gateway prepares requests from it."""

    name: str
    framework: str
    weights: str  # "pretrained" | "random"
    weights_note: str | None
    labels: list[str]
    input_spec: InputSpec
    #: Batches timed at replica start: the latency model's seed.
    warmup: tuple[LatencySample, ...] = ()
    #: The model's class colours (RGB per class id) when its checkpoint or dataset has
    #: them; None: the gateway draws with a generated palette.
    palette: tuple[tuple[int, int, int], ...] | None = None


@dataclass
class PredictRequest:
    """One image on its way to a model replica."""

    image: np.ndarray  # HxWx3 uint8 at the model's input size
    label_size: tuple[int, int]  # (width, height) of the label map to return
    #: Milliseconds left of the request's budget when the gateway sent it (None: no budget).
    budget_ms: float | None = None
    #: Set by the replica on arrival, on its own monotonic clock.
    received_at: float | None = None

    @property
    def pixels(self) -> int:
        return int(self.image.shape[0]) * int(self.image.shape[1])

    def receive(self, clock: Callable[[], float] = time.monotonic) -> PredictRequest:
        """Stamp the arrival time on the replica's clock (once)."""
        if self.received_at is None:
            self.received_at = clock()
        return self

    @property
    def deadline(self) -> float | None:
        """The replica-local time after which the request must not run."""
        if self.budget_ms is None:
            return None
        if self.received_at is None:
            raise RuntimeError("receive() the request before reading its deadline")
        return self.received_at + self.budget_ms / 1000.0


@dataclass
class Prediction:
    labels: np.ndarray  # (height, width) uint8/uint16 at the requested label size
    #: From arrival at the replica to its batch starting.
    queue_ms: float
    inference_ms: float
    batch_size: int
    #: Weights of the replica that ran it, and why they are random when they are.
    weights: str = "pretrained"
    weights_note: str | None = None
    #: Input pixels of the whole batch, and an id shared by its requests.
    batch_pixels: int = 0
    batch_id: str = ""


class ModelEndpoint(Protocol):
    """A model as the gateway reaches it: a Ray deployment handle, or a core in-process."""

    async def card(self) -> ModelCard: ...

    async def predict(self, request: PredictRequest) -> Prediction: ...

    async def describe(self) -> dict[str, Any]: ...

    async def ready(self) -> bool: ...
