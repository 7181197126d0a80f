"""The transport-free segmentation pipeline: bytes + options in, result out.

Every protocol module calls :meth:`SegmentationService.segment`: resolve the
model (by name, or by budget through the :class:`Router`), admit the request there
(:mod:`~deployments.pipeline.admission`: 503 at once when its replicas are full),
decode and downscale the image for that model, hand it to a :class:`ModelEndpoint` (a
Ray deployment handle in production, a model core in-process in tests, benchmarks and
GPU checks) and encode what the client asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from deployments.config import GatewayConfig, ModelConfig, valid_model_name
from deployments.contract import ModelCard, ModelEndpoint, Prediction, PredictRequest
from deployments.pipeline.admission import Admission, Ticket
from deployments.pipeline.decode_pool import DecodePool, shared_pool
from deployments.pipeline.encoding import OutputEncoder
from deployments.pipeline.errors import (
    DeadlineExceeded,
    DecodeTimeout,
    SegServeError,
    UnknownModel,
    echo,
)
from deployments.pipeline.imaging import (
    DecodedImage,
    ImageHeader,
    Pixels,
    decode_pixels,
    fit_within,
)
from deployments.pipeline.model_status import (
    ModelState,
    ModelStatusBoard,
    log_load_note,
    weights_reason,
)
from deployments.pipeline.options import AUTO_MODEL, SegmentOptions
from deployments.pipeline.routing import RouteChoice, Router, explicit
from deployments.protocols.wire import (
    Budget,
    SegmentResult,
    Timings,
    random_weights_warning,
)


class SegmentationService:
    """Decode -> model -> encode, shared by every transport; routes ``model=auto`` by budget."""

    def __init__(
        self,
        endpoints: Mapping[str, ModelEndpoint],
        models: Sequence[ModelConfig],
        gateway: GatewayConfig,
        replicas: Callable[[str], int | None] | None = None,
        on_result: Callable[[SegmentResult], None] | None = None,
        decode_pool: DecodePool | None = None,
        gateways: Callable[[], int | None] | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        if set(endpoints) != set(self.models):
            raise ValueError("one endpoint per configured model")
        # Responses name why weights are random by a stable code; the load error itself
        # (paths, host names) goes to the logs.
        self.endpoints: dict[str, ModelEndpoint] = {
            name: _ReasonedEndpoint(name, endpoint, self.models[name].weights)
            for name, endpoint in endpoints.items()
        }
        self.default_model = gateway.default_model or models[0].name
        self.config = gateway
        self.limits = gateway.limits.image_limits()
        self.router = Router(gateway.routing, self.models, self.default_model, replicas)
        self.admission = Admission(gateway, self.models, self.router.replicas, gateways)
        self._on_result = on_result
        self._decode_pool = decode_pool
        # Read once at start: a configured key file or variable that holds none fails here.
        self.api_keys: tuple[str, ...] = gateway.auth.load_keys() if gateway.auth.configured else ()
        self.status = ModelStatusBoard(
            self.endpoints, gateway.status.refresh_s, gateway.status.probe_timeout_s
        )
        self.encoder = OutputEncoder(gateway, self.limits)

    @property
    def decoder(self) -> DecodePool:
        """The decode workers (the process's shared pool of the configured size, by default),
        started on first use."""
        if self._decode_pool is None:
            limits = self.config.limits
            self._decode_pool = shared_pool(
                limits.decode_workers, limits.decode_queue, limits.decode_timeout_s
            )
        return self._decode_pool

    def close(self) -> None:
        """Stop the background status refresh (the shared decode pool lives on)."""
        self.status.close()

    def admit(self, model: str, options: SegmentOptions | None = None) -> Ticket:
        """Admission before the body is read (404 for an unknown name, 503 ``overloaded``
        for a full model); pass the ticket to :meth:`segment` inside its ``with``."""
        self.resolve_model(model)
        return self.admission.enter(model, options)

    def resolve_model(self, requested: str) -> str:
        if requested == AUTO_MODEL:
            return self.default_model
        self._check_name(requested, "(or 'auto')")
        return requested

    def _check_name(self, requested: str, alternatives: str = "") -> None:
        """404 for a name that is not configured; one that cannot be a model name is never
        looked up, and is echoed truncated."""
        if not valid_model_name(requested) or requested not in self.models:
            raise UnknownModel(
                f"unknown model {echo(requested)}; available: "
                f"{', '.join(sorted(self.models))} {alternatives}".rstrip()
            )

    async def _cards(self) -> dict[str, ModelCard]:
        """Cards of the models that answer; a model that is down is not a candidate."""
        names = list(self.endpoints)
        timeout = self.config.routing.card_timeout_s
        cards = await asyncio.gather(
            *(
                self.endpoints[n].card()
                if n == self.default_model
                else asyncio.wait_for(self.endpoints[n].card(), timeout)
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

    async def route(
        self, options: SegmentOptions, image_size: tuple[int, int] | None, elapsed_ms: float
    ) -> tuple[RouteChoice, ModelCard]:
        budget = options.budget_ms
        remaining = None if budget is None else budget - elapsed_ms
        if options.model != AUTO_MODEL or budget is None or options.budget_is_deadline:
            name = self.resolve_model(options.model)
            card = await self.endpoints[name].card()
            predicted = self.router.predict_ms(card, image_size)
            if options.model == AUTO_MODEL:
                return RouteChoice(name, predicted, None, "default"), card
            return explicit(name, predicted, remaining, options.strict), card
        cards = await self._cards()
        full = {name for name in cards if self.admission.full(name)}
        choice = self.router.choose(cards, image_size, remaining, options.strict, full)
        return choice, cards[choice.name]

    # ------------------------------------------------------------ one request

    async def segment(
        self, data: bytes | Pixels, options: SegmentOptions, ticket: Ticket | None = None
    ) -> SegmentResult:
        """One request, admitted before it is decoded (``ticket``: taken by the protocol)."""
        self.resolve_model(options.model)  # an unknown name is a 404 before any decoding
        with self.admission.enter(options.model, options, ticket) as held:
            return await self._segment(data, options, held)

    async def _segment(
        self, data: bytes | Pixels, options: SegmentOptions, ticket: Ticket
    ) -> SegmentResult:
        started = time.perf_counter()

        def elapsed_ms() -> float:
            return (time.perf_counter() - started) * 1000

        # Header once, off the event loop, only with the accepted formats' parsers; the
        # decode reuses it. Every error about the bytes comes before any model is asked.
        header: ImageHeader | None = None
        if isinstance(data, Pixels):
            size = data.size
        else:
            header = await self.decoder.probe(data, self.limits)
            size = header.display_size
        choice, card = await self.route(options, size, elapsed_ms())
        name = choice.name
        ticket.ensure(name)  # model=auto with a budget: admitted once routed, before decoding
        decoded = await self._decode(data, card, header, options, elapsed_ms())
        decoded_at = time.perf_counter()
        label_size = fit_within(decoded.width, decoded.height, self.models[name].label_max_pixels)
        budget_left = None if options.budget_ms is None else options.budget_ms - elapsed_ms()
        if budget_left is not None and budget_left <= 0:
            raise DeadlineExceeded(
                f"budget of {options.budget_ms:g} ms used up before the model could run"
            )
        queue_estimate = self.router.queue_ms(card)
        request = PredictRequest(image=decoded.pixels, label_size=label_size, budget_ms=budget_left)
        sent = time.perf_counter()
        photo = self.encoder.prefetch_overlay_photo(data, decoded, options)
        with self.router.in_flight(card, request.pixels):
            prediction = await self.endpoints[name].predict(request)
        returned = time.perf_counter()

        out_w, out_h = (
            (decoded.width, decoded.height) if options.mask_size == "original" else label_size
        )
        overlay_photo = None if photo is None else await photo
        encoded = await asyncio.to_thread(
            self.encoder.encode,
            prediction.labels,
            (out_w, out_h),
            card,
            options,
            decoded,
            overlay_photo,
        )
        finished = time.perf_counter()
        round_trip_ms = (returned - sent) * 1000
        total_ms = (finished - started) * 1000
        gateway_ms = (decoded_at - started) * 1000 + (finished - returned) * 1000
        self.router.observe(
            card, prediction, round_trip_ms, queue_estimate,
            decoded.width * decoded.height, gateway_ms,
        )  # fmt: skip
        result = SegmentResult(
            model=name,
            # The replica that ran it says which weights it has: replicas of one model
            # may differ (weights: auto on nodes with and without the weights cached).
            weights=prediction.weights,
            warning=(
                random_weights_warning(name, prediction.weights_note)
                if prediction.weights == "random"
                else None
            ),
            width=decoded.width,
            height=decoded.height,
            processed=decoded.processed_size,
            classes=encoded.classes,
            mask_png=encoded.mask_png,
            mask_size=(out_w, out_h),
            _labels=encoded.labels,
            timings=Timings(
                decode=round(decoded.decode_ms, 2),
                queue=round(max(0.0, round_trip_ms - prediction.inference_ms), 2),
                inference=round(prediction.inference_ms, 2),
                encode=round((finished - returned) * 1000, 2),
                total=round(total_ms, 2),
                encode_by_output=encoded.ms,
            ),
            batch_size=prediction.batch_size,
            budget=Budget(
                budget_ms=options.budget_ms,
                predicted_ms=round(choice.predicted_ms, 1),
                met=None if options.budget_ms is None else total_ms <= options.budget_ms,
                chosen_by=choice.chosen_by,
            ),
            contours=encoded.contours,
            rle=encoded.rle,
            overlay=encoded.overlay,
            segments=encoded.segments,
        )
        if self._on_result is not None:
            self._on_result(result)
        return result

    async def _decode(
        self,
        data: bytes | Pixels,
        card: ModelCard,
        header: ImageHeader | None,
        options: SegmentOptions,
        elapsed: float,
    ) -> DecodedImage:
        """Decode in the pool, within what is left of the budget (or the pool's deadline)."""
        budget_s = None
        if options.budget_ms is not None:
            budget_s = (options.budget_ms - elapsed) / 1000
            if budget_s <= 0:
                raise DeadlineExceeded(
                    f"budget of {options.budget_ms:g} ms used up before the model could run"
                )
        if isinstance(data, Pixels):  # already decoded (a UINT8 tensor): only the resize
            return await asyncio.to_thread(decode_pixels, data, card.input_spec, self.limits)
        try:
            return await self.decoder.decode(
                data, card.input_spec, self.limits, header, timeout_s=budget_s
            )
        except DecodeTimeout as e:
            if budget_s is not None and budget_s < self.decoder.timeout_s:
                # The budget ran out, not the pool's bound: the image is not to blame.
                raise DeadlineExceeded(
                    f"budget of {options.budget_ms:g} ms ran out while decoding the image"
                ) from e
            raise

    # ------------------------------------------------------------ models, readiness

    async def describe(self, name: str, timeout_s: float | None = None) -> dict[str, Any]:
        """A model for ``/v1/models``, from the background refresh (never a call that waits
        in the model's queue). ``timeout_s`` is unused (kept for callers of the old API)."""
        self._check_name(name)
        states = await self.status.current()
        return self._describe(name, states[name])

    def _describe(self, name: str, state: ModelState) -> dict[str, Any]:
        config = self.models[name]
        if state.details is not None:
            info = dict(state.details)
        else:  # a model that is loading or down is listed, not hidden
            info = {
                "name": name,
                "framework": config.framework,
                "source": config.source,
                "weights_policy": config.weights,
            }
            if state.card is not None:  # what its replicas loaded is known from a card
                info.update(weights=state.card.weights, weights_note=state.card.weights_note)
                info["labels"] = list(state.card.labels)
        info["ready"] = state.ready
        if state.error is not None:
            info["error"] = state.error
        weights = info.get("weights")
        if isinstance(weights, str):
            info["weights_reason"] = weights_reason(config.weights, weights)
        note = info.pop("weights_note", None)
        if weights == "random":
            log_load_note(name, note if isinstance(note, str) else None)
        if self.config.status.expose_load_errors:
            info["weights_note"] = note
        if state.checked_at is not None:
            info["checked_s_ago"] = round(max(0.0, self.status.clock() - state.checked_at), 1)
        info.setdefault("quality", config.quality)
        info["num_replicas"] = config.num_replicas
        info["routing"] = self.router.info(name)
        info["admission"] = self.admission.info(name)
        if config.autoscaling_config is not None:
            info["autoscaling"] = config.autoscaling_config.ray_options()
        return info

    async def describe_all(self) -> list[dict[str, Any]]:
        states = await self.status.current()
        return [self._describe(name, states[name]) for name in self.models]

    async def not_ready(self, timeout_s: float | None = None) -> list[str]:
        """Models not ready at the last background refresh (empty: all ready)."""
        states = await self.status.current()
        return [name for name in self.models if not states[name].ready]


class _ReasonedEndpoint:
    """A model endpoint whose predictions and card carry the stable ``weights_reason``
    code in place of the replica's load error, which is logged once instead."""

    def __init__(self, name: str, inner: ModelEndpoint, policy: str) -> None:
        self.name = name
        self.inner = inner
        self.policy = policy

    def _reason(self, weights: str, note: str | None) -> str | None:
        if weights == "random":
            log_load_note(self.name, note)
        return weights_reason(self.policy, weights)

    async def card(self) -> ModelCard:
        card = await self.inner.card()
        if card.weights == "random":
            self._reason(card.weights, card.weights_note)
        return card

    async def predict(self, request: PredictRequest) -> Prediction:
        prediction = await self.inner.predict(request)
        if prediction.weights != "random":
            return prediction
        reason = self._reason(prediction.weights, prediction.weights_note)
        return dataclasses.replace(prediction, weights_note=reason)

    async def describe(self) -> dict[str, Any]:
        return await self.inner.describe()

    async def ready(self) -> bool:
        return await self.inner.ready()


def peek_size(data: bytes) -> tuple[int, int] | None:
    """An image's displayed (width, height) from its header; None if it is not one.

    Kept for callers outside the service: :meth:`SegmentationService.segment` probes
    once, off the event loop, and reuses the header for the decode.
    """
    from deployments.config import LimitsConfig
    from deployments.pipeline.imaging import probe_image

    try:
        return probe_image(data, LimitsConfig().image_limits()).display_size
    except SegServeError:
        return None
