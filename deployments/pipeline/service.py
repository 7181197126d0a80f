"""The transport-free segmentation service: bytes + options in, result out.

HTTP and gRPC handlers both call :meth:`SegmentationService.segment`; it
resolves the model, decodes and downscales the image for that model, hands it
to a :class:`ModelEndpoint` (a Ray deployment handle in production, the model
core in-process in benchmarks) and encodes what the client asked for.
"""

from __future__ import annotations

import asyncio
import collections
import io
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from deployments.pipeline.errors import DeadlineExceeded, UnknownModel
from deployments.pipeline.imaging import (
    DecodedImage,
    ImageLimits,
    InputSpec,
    decode_image,
    fit_within,
    resize_labels,
)
from deployments.pipeline.latency import LatencySample, LinearLatency, QueueState, queue_wait_ms
from deployments.pipeline.options import AUTO_MODEL, SegmentOptions
from deployments.pipeline.outputs import ClassShare, class_table, encode_label_png
from deployments.pipeline.routing import Candidate, RouteChoice, choose, explicit


@dataclass(frozen=True)
class ModelCard:
    """What the gateway must know of a model to prepare requests and read answers."""

    name: str
    framework: str
    weights: str  # "pretrained" | "random"
    weights_note: str | None
    labels: list[str]
    input_spec: InputSpec
    label_max_pixels: int
    #: Accuracy used to rank models for ``model=auto`` (None: never chosen by budget).
    quality: float | None = None
    #: Batches timed at replica start: the latency model's seed.
    warmup: tuple[LatencySample, ...] = ()
    max_batch_size: int = 1
    max_batch_pixels: int = 512 * 512
    replicas: int = 1


@dataclass
class PredictRequest:
    """One image on its way to a model replica."""

    image: np.ndarray  # HxWx3 uint8 at the model's input size
    label_size: tuple[int, int]  # (width, height) of the label map to return
    deadline: float | None = None  # time.time() after which it must not run
    sent_at: float = field(default_factory=time.time)

    @property
    def pixels(self) -> int:
        return int(self.image.shape[0]) * int(self.image.shape[1])


@dataclass
class Prediction:
    labels: np.ndarray  # (height, width) uint8/uint16 at the requested label size
    queue_ms: float
    inference_ms: float
    batch_size: int
    #: Input pixels of the whole batch, and an id shared by its requests.
    batch_pixels: int = 0
    batch_id: str = ""


class ModelEndpoint(Protocol):
    async def card(self) -> ModelCard: ...

    async def predict(self, request: PredictRequest) -> Prediction: ...


@dataclass
class SegmentResult:
    model: str
    weights: str
    weights_note: str | None
    width: int
    height: int
    processed: tuple[int, int]
    classes: list[ClassShare] | None
    mask_png: bytes | None
    mask_size: tuple[int, int]
    timings_ms: dict[str, float]
    batch_size: int
    #: {budget_ms, predicted_ms, met, chosen_by}
    budget: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The HTTP JSON body (the mask as base64 PNG)."""
        import base64

        body: dict[str, Any] = {
            "model": self.model,
            "weights": self.weights,
            "width": self.width,
            "height": self.height,
            "processed": {"width": self.processed[0], "height": self.processed[1]},
        }
        if self.weights == "random":
            body["warning"] = f"model {self.model!r} runs on random weights: {self.weights_note}"
        if self.classes is not None:
            body["classes"] = [row.to_dict() for row in self.classes]
        if self.mask_png is not None:
            body["mask"] = {
                "format": "png",
                "width": self.mask_size[0],
                "height": self.mask_size[1],
                "data": base64.b64encode(self.mask_png).decode("ascii"),
            }
        body["timings_ms"] = self.timings_ms
        body["batch_size"] = self.batch_size
        body["budget"] = self.budget
        return body


@dataclass(frozen=True)
class RoutingSettings:
    """How cautious the latency predictions are (``gateway.routing`` in the config)."""

    #: Predictions add this many residual standard deviations to the fitted time.
    margin_sigmas: float = 3.0
    #: Half-life of the latency fits, in observed batches.
    half_life: float = 50.0
    #: The models share their compute (one machine's CPU cores, one GPU): work in
    #: flight to any model delays every model, not only its own queue.
    shared_compute: bool = False
    #: With shared compute: above this busy fraction (model time per second, over the
    #: last ``utilization_window_s``), budgets get the fastest fitting model, not the best.
    max_upgrade_utilization: float = 0.5
    utilization_window_s: float = 10.0


@dataclass
class _ModelState:
    """The gateway's running view of one model: latency fits and work in flight."""

    card: ModelCard
    service: LinearLatency  # batch time vs batch input pixels (replica-measured)
    overhead: LinearLatency  # round trip minus inference minus the queue estimate
    queue: QueueState = field(default_factory=QueueState)
    round_trips: int = 0

    def wait_ms(self, replicas: int) -> float:
        """Time for the work in flight to this model to drain."""
        return queue_wait_ms(
            self.service, self.queue, replicas, self.card.max_batch_size,
            self.card.max_batch_pixels,
        )  # fmt: skip


#: How long ``model=auto`` waits for a non-default model's card (a model still loading
#: is left out of the choice rather than holding the request).
_CARD_TIMEOUT_S = 2.0
#: Batch ids remembered to count each batch once (its requests return one by one).
_SEEN_BATCHES = 4096

#: Decode + encode in the gateway vs original pixels, before anything is measured:
#: about 20 ms plus 20 ms per megapixel on a laptop core (JPEG draft decoding).
_GATEWAY_PRIOR = (LatencySample(0, 20.0), LatencySample(10e6, 220.0))


class SegmentationService:
    """Decode -> model -> encode, shared by every transport; routes ``model=auto`` by budget."""

    def __init__(
        self,
        endpoints: Mapping[str, ModelEndpoint],
        default_model: str,
        limits: ImageLimits,
        png_compress_level: int = 1,
        routing: RoutingSettings | None = None,
        replicas: Callable[[str], int | None] | None = None,
    ) -> None:
        if default_model not in endpoints:
            raise ValueError(f"default model {default_model!r} is not among the endpoints")
        self.endpoints = dict(endpoints)
        self.default_model = default_model
        self.limits = limits
        self.png_compress_level = png_compress_level
        self.routing = routing or RoutingSettings()
        self._replicas = replicas
        self._states: dict[str, _ModelState] = {}
        self.gateway_cost = LinearLatency(self.routing.half_life, _GATEWAY_PRIOR, 2.0)
        self._seen_batches: dict[str, None] = {}  # insertion-ordered: oldest first
        self._busy: collections.deque[tuple[float, float]] = collections.deque(maxlen=4096)

    def resolve_model(self, requested: str) -> str:
        if requested == AUTO_MODEL:
            return self.default_model
        if requested not in self.endpoints:
            raise UnknownModel(
                f"unknown model {requested!r}; available: "
                f"{', '.join(sorted(self.endpoints))} (or 'auto')"
            )
        return requested

    # ------------------------------------------------------------ latency model

    def _state(self, card: ModelCard) -> _ModelState:
        state = self._states.get(card.name)
        if state is None:
            half_life = self.routing.half_life
            state = _ModelState(
                card=card,
                # Warm-up batches run while replicas start: they seed, real batches decide.
                service=LinearLatency(half_life, card.warmup, prior_weight=0.1),
                overhead=LinearLatency(half_life),
            )
            self._states[card.name] = state
        return state

    def replicas(self, card: ModelCard) -> int:
        running = self._replicas(card.name) if self._replicas else None
        return max(1, running or card.replicas)

    def queue_ms(self, card: ModelCard) -> float:
        """Expected wait before a new request's batch starts on this model."""
        wait = self._state(card).wait_ms(self.replicas(card))
        if self.routing.shared_compute:
            wait += sum(
                other.wait_ms(self.replicas(other.card))
                for name, other in self._states.items()
                if name != card.name
            )
        return wait

    def predict_ms(self, card: ModelCard, image_size: tuple[int, int] | None) -> float:
        """Predicted decode + queue + service + encode for an image of this size, now."""
        state = self._state(card)
        margin = self.routing.margin_sigmas
        width, height = image_size or card.input_spec.target_size(512, 512)
        in_w, in_h = card.input_spec.target_size(width, height)
        parts = (
            (self.gateway_cost, width * height),
            (state.overhead, 0),
            (state.service, in_w * in_h),
        )
        mean = sum(model.mean_ms(pixels) for model, pixels in parts)
        # Independent parts: their variances add (a sum of per-part margins overstates).
        spread = math.sqrt(sum(model.coefficients()[2] ** 2 for model, _ in parts))
        return mean + self.queue_ms(card) + margin * spread

    def _observe(
        self,
        card: ModelCard,
        prediction: Prediction,
        round_trip_ms: float,
        queue_estimate_ms: float,
        original_pixels: int,
        gateway_ms: float,
    ) -> None:
        state = self._state(card)
        batch = prediction.batch_id
        if batch and batch not in self._seen_batches:  # one sample per batch, not per request
            self._seen_batches[batch] = None
            if len(self._seen_batches) > _SEEN_BATCHES:
                del self._seen_batches[next(iter(self._seen_batches))]
            state.service.observe(prediction.batch_pixels, prediction.inference_ms)
            self._busy.append((time.monotonic(), prediction.inference_ms / 1000))
        if state.round_trips:  # the first call through a new handle also sets it up
            state.overhead.observe(
                0, max(0.0, round_trip_ms - prediction.inference_ms - queue_estimate_ms)
            )
        state.round_trips += 1
        self.gateway_cost.observe(original_pixels, gateway_ms)

    async def _cards(self) -> dict[str, ModelCard]:
        """Cards of the models that answer; a model that is down is not a candidate."""
        names = list(self.endpoints)
        cards = await asyncio.gather(
            *(
                self.endpoints[n].card()
                if n == self.default_model
                else asyncio.wait_for(self.endpoints[n].card(), _CARD_TIMEOUT_S)
                for n in names
            ),
            return_exceptions=True,
        )
        usable = {n: c for n, c in zip(names, cards, strict=True) if isinstance(c, ModelCard)}
        if self.default_model not in usable:
            failure = cards[names.index(self.default_model)]
            assert isinstance(failure, BaseException)
            raise failure
        return usable

    def candidates(self, cards: Mapping[str, ModelCard]) -> list[str]:
        """Models ``model=auto`` may pick: a quality figure and the default model's labels."""
        default = cards[self.default_model]
        return [
            name
            for name, card in cards.items()
            if name == self.default_model
            or (card.quality is not None and card.labels == default.labels)
        ]

    async def route(
        self, options: SegmentOptions, image_size: tuple[int, int] | None, elapsed_ms: float
    ) -> tuple[RouteChoice, ModelCard]:
        budget = options.budget_ms
        remaining = None if budget is None else budget - elapsed_ms
        if options.model != AUTO_MODEL or budget is None or options.budget_is_deadline:
            name = self.resolve_model(options.model)
            card = await self.endpoints[name].card()
            predicted = self.predict_ms(card, image_size)
            if options.model == AUTO_MODEL:
                return RouteChoice(name, predicted, None, "default"), card
            return explicit(name, predicted, remaining, options.strict), card
        cards = await self._cards()
        candidates = []
        for candidate in self.candidates(cards):
            quality = cards[candidate].quality
            candidates.append(
                Candidate(
                    candidate,
                    float("-inf") if quality is None else quality,
                    self.predict_ms(cards[candidate], image_size),
                )
            )
        choice = choose(
            candidates, remaining, self.default_model, options.strict, self.upgrade_allowed()
        )
        return choice, cards[choice.name]

    def utilization(self) -> float:
        """Model seconds run per second, over the last ``utilization_window_s``."""
        window = self.routing.utilization_window_s
        since = time.monotonic() - window
        return sum(busy for at, busy in self._busy if at >= since) / window

    def upgrade_allowed(self) -> bool:
        if not self.routing.shared_compute:
            return True
        return self.utilization() <= self.routing.max_upgrade_utilization

    def routing_info(self, name: str) -> dict[str, Any]:
        """The gateway's latency estimates for a model, for ``/v1/models``."""
        state = self._states.get(name)
        if state is None:
            return {"samples": 0, "note": "no request routed to this model yet"}
        return {
            "service": state.service.to_dict(),
            "overhead": state.overhead.to_dict(),
            "in_flight": {"requests": state.queue.requests, "pixels": state.queue.pixels},
            "queue_ms": round(self.queue_ms(state.card), 1),
            "predicted_ms_512x512": round(self.predict_ms(state.card, (512, 512)), 1),
            "margin_sigmas": self.routing.margin_sigmas,
            "shared_compute": self.routing.shared_compute,
            "utilization": round(self.utilization(), 3),
        }

    # ------------------------------------------------------------ one request

    async def segment(self, data: bytes, options: SegmentOptions) -> SegmentResult:
        started = time.perf_counter()
        deadline = options.deadline(time.time())
        size = peek_size(data)
        choice, card = await self.route(options, size, (time.perf_counter() - started) * 1000)
        name = choice.name
        endpoint = self.endpoints[name]
        state = self._state(card)

        decoded: DecodedImage = await asyncio.to_thread(
            decode_image, data, card.input_spec, self.limits
        )
        decoded_at = time.perf_counter()
        label_size = fit_within(decoded.width, decoded.height, card.label_max_pixels)
        if deadline is not None and time.time() >= deadline:
            raise DeadlineExceeded(
                f"budget of {options.budget_ms:g} ms used up before the model could run"
            )
        queue_estimate = self.queue_ms(card)
        request = PredictRequest(image=decoded.pixels, label_size=label_size, deadline=deadline)
        state.queue.requests += 1
        state.queue.pixels += request.pixels
        sent = time.perf_counter()
        try:
            prediction = await endpoint.predict(request)
        finally:
            state.queue.requests -= 1
            state.queue.pixels -= request.pixels
        returned = time.perf_counter()

        out_w, out_h = (
            (decoded.width, decoded.height) if options.mask_size == "original" else label_size
        )
        classes, png = await asyncio.to_thread(
            self._encode, prediction.labels, out_w, out_h, card.labels, options.outputs
        )
        finished = time.perf_counter()
        round_trip_ms = (returned - sent) * 1000
        total_ms = (finished - started) * 1000
        gateway_ms = (decoded_at - started) * 1000 + (finished - returned) * 1000
        self._observe(
            card, prediction, round_trip_ms, queue_estimate,
            decoded.width * decoded.height, gateway_ms,
        )  # fmt: skip
        return SegmentResult(
            model=name,
            weights=card.weights,
            weights_note=card.weights_note,
            width=decoded.width,
            height=decoded.height,
            processed=decoded.processed_size,
            classes=classes,
            mask_png=png,
            mask_size=(out_w, out_h),
            timings_ms={
                "decode": round(decoded.decode_ms, 2),
                # Everything between sending and the batch starting: transport and queueing.
                "queue": round(max(0.0, round_trip_ms - prediction.inference_ms), 2),
                "inference": round(prediction.inference_ms, 2),
                "encode": round((finished - returned) * 1000, 2),
                "total": round(total_ms, 2),
            },
            batch_size=prediction.batch_size,
            budget={
                "budget_ms": options.budget_ms,
                "predicted_ms": round(choice.predicted_ms, 1),
                "met": None if options.budget_ms is None else total_ms <= options.budget_ms,
                "chosen_by": choice.chosen_by,
            },
        )

    def _encode(
        self,
        labels: np.ndarray,
        width: int,
        height: int,
        names: list[str],
        outputs: frozenset[str],
    ) -> tuple[list[ClassShare] | None, bytes | None]:
        classes = class_table(labels, width, height, names) if "classes" in outputs else None
        png = None
        if "mask" in outputs:
            png = encode_label_png(resize_labels(labels, width, height), self.png_compress_level)
        return classes, png


def peek_size(data: bytes) -> tuple[int, int] | None:
    """An image's stored (width, height) from its header, without decoding; None if unreadable.

    Routing needs the size before choosing a model; decoding (and every error
    about the bytes) happens afterwards, for the chosen model.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.width), int(image.height)
    except Exception:
        return None
