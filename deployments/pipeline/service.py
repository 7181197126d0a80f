"""The transport-free segmentation pipeline: bytes + options in, result out.

Every protocol module calls :meth:`SegmentationService.segment`: resolve the
model (by name, or by budget through the :class:`Router`), decode and downscale
the image for that model, hand it to a :class:`ModelEndpoint` (a Ray deployment
handle in production, a model core in-process in tests, benchmarks and GPU
checks) and encode what the client asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from deployments.config import GatewayConfig, ModelConfig, valid_model_name
from deployments.contract import ModelCard, ModelEndpoint, Prediction, PredictRequest
from deployments.pipeline.contours import class_contours, class_name, class_pixels
from deployments.pipeline.decode_pool import DecodePool, shared_pool
from deployments.pipeline.errors import (
    DeadlineExceeded,
    DecodeTimeout,
    SegServeError,
    UnknownModel,
    echo,
)
from deployments.pipeline.image_contract import segments as image_segments
from deployments.pipeline.imaging import (
    DecodedImage,
    ImageHeader,
    InputSpec,
    decode_image,
    fit_within,
    nearest_indices,
    resize_labels,
)
from deployments.pipeline.model_status import (
    ModelState,
    ModelStatusBoard,
    log_load_note,
    weights_reason,
)
from deployments.pipeline.options import AUTO_MODEL, IMAGE_SEGMENTS, DrawOptions, SegmentOptions
from deployments.pipeline.outputs import class_table, encode_label_png
from deployments.pipeline.overlay import overlay_image
from deployments.pipeline.palette import resolve_palette
from deployments.pipeline.rle import ClassRle, class_rle
from deployments.pipeline.routing import RouteChoice, Router, explicit
from deployments.protocols.wire import (
    Budget,
    ClassShare,
    Overlay,
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
        self._on_result = on_result
        self._decode_pool = decode_pool
        # Read once at start: a configured key file or variable that holds none fails here.
        self.api_keys: tuple[str, ...] = gateway.auth.load_keys() if gateway.auth.configured else ()
        self.status = ModelStatusBoard(
            self.endpoints, gateway.status.refresh_s, gateway.status.probe_timeout_s
        )

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
        self._palettes: dict[tuple[object, ...], np.ndarray] = {}

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
        choice = self.router.choose(cards, image_size, remaining, options.strict)
        return choice, cards[choice.name]

    # ------------------------------------------------------------ one request

    async def segment(self, data: bytes, options: SegmentOptions) -> SegmentResult:
        started = time.perf_counter()

        def elapsed_ms() -> float:
            return (time.perf_counter() - started) * 1000

        self.resolve_model(options.model)  # an unknown name is a 404 before any decoding
        # Header once, off the event loop, only with the accepted formats' parsers; the
        # decode reuses it. Every error about the bytes comes before any model is asked.
        header = await self.decoder.probe(data, self.limits)
        choice, card = await self.route(options, header.display_size, elapsed_ms())
        name = choice.name
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
        photo = self._prefetch_overlay_photo(data, decoded, options)
        with self.router.in_flight(card, request.pixels):
            prediction = await self.endpoints[name].predict(request)
        returned = time.perf_counter()

        out_w, out_h = (
            (decoded.width, decoded.height) if options.mask_size == "original" else label_size
        )
        overlay_photo = None if photo is None else await photo
        encoded = await asyncio.to_thread(
            self._encode, prediction.labels, (out_w, out_h), card, options, decoded, overlay_photo
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
        data: bytes,
        card: ModelCard,
        header: ImageHeader,
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

    def _encode(
        self,
        labels: np.ndarray,
        mask_size: tuple[int, int],
        card: ModelCard,
        options: SegmentOptions,
        decoded: DecodedImage,
        overlay_photo: DecodedImage | Exception | None = None,
    ) -> Encoded:
        """Every output asked for, from the model's label map; each one timed.

        ``labels`` is the server's bounded label map; only the mask PNG and the RLE
        (at the mask's size) and the overlay (at most ``overlay_max_pixels``) are
        made larger. Contours and the IMAGE segments are computed on ``labels``
        itself, with areas and thresholds at the original size.
        """
        wanted = options.outputs
        names = card.labels
        original = (decoded.width, decoded.height)
        encoded = Encoded()
        timer = _Timer(encoded.ms)
        if "classes" in wanted:
            with timer("classes"):
                encoded.classes = class_table(labels, *mask_size, names)
        if "mask" in wanted:
            with timer("mask"):
                encoded.mask_png = encode_label_png(
                    resize_labels(labels, *mask_size), self.config.png_compress_level
                )
        if "rle" in wanted:
            with timer("rle"):
                encoded.rle = [r.to_dict() for r in scaled_class_rle(labels, mask_size, names)]
        if "contours" in wanted:
            with timer("contours"):
                encoded.contours = self._contours(labels, names, original, options.draw)
        if "overlay" in wanted:
            if isinstance(overlay_photo, Exception):
                raise overlay_photo
            if overlay_photo is None:
                raise ValueError("outputs=overlay needs the photo: see _prefetch_overlay_photo")
            # Decoded while the model ran: its time overlaps inference, not encode.
            encoded.ms["overlay_photo_decode"] = round(overlay_photo.decode_ms, 2)
            with timer("overlay"):
                encoded.overlay = self._overlay(labels, card, options.draw, overlay_photo, decoded)
        if IMAGE_SEGMENTS in wanted:
            with timer(IMAGE_SEGMENTS):
                encoded.segments = image_segments(
                    labels, names, original, rules=self.config.image.rules()
                )
        return encoded

    def _contours(
        self,
        labels: np.ndarray,
        names: list[str],
        original: tuple[int, int],
        draw: DrawOptions,
    ) -> list[dict[str, Any]]:
        defaults = self.config.outputs
        found = class_contours(
            labels,
            names,
            original_size=original,
            min_area=defaults.contour_min_area if draw.min_area is None else draw.min_area,
            simplify=defaults.contour_simplify if draw.simplify is None else draw.simplify,
            max_classes=draw.max_classes or defaults.contour_max_classes,
        )
        return [c.to_dict() for c in found]

    def _overlay(
        self,
        labels: np.ndarray,
        card: ModelCard,
        draw: DrawOptions,
        photo: DecodedImage,
        decoded: DecodedImage,
    ) -> Overlay:
        defaults = self.config.outputs
        fmt = draw.overlay_format or defaults.overlay_format
        legend = defaults.overlay_legend if draw.legend is None else draw.legend
        size = fit_within(decoded.width, decoded.height, defaults.overlay_max_pixels)
        picture = overlay_image(
            photo.pixels,
            labels,
            self.palette(card),
            alpha=defaults.overlay_alpha if draw.alpha is None else draw.alpha,
            fmt=fmt,
            max_pixels=defaults.overlay_max_pixels,
            size=(decoded.width, decoded.height),
            legend_names=card.labels if legend else None,
            jpeg_quality=defaults.overlay_jpeg_quality,
        )
        return Overlay(format=fmt, width=size[0], height=size[1], data=picture)

    def _prefetch_overlay_photo(
        self, data: bytes, decoded: DecodedImage, options: SegmentOptions
    ) -> asyncio.Task[DecodedImage | Exception] | None:
        """Start decoding the overlay's photo, to run while the model does (None: no overlay).

        The task never raises: an error is its result, raised by the encode, so a
        failed prediction leaves no unretrieved exception behind.
        """
        if "overlay" not in options.outputs:
            return None

        async def decode() -> DecodedImage | Exception:
            try:
                return await asyncio.to_thread(self.overlay_photo, data, decoded)
            except Exception as e:
                return e

        return asyncio.ensure_future(decode())

    def overlay_photo(self, data: bytes, decoded: DecodedImage) -> DecodedImage:
        """The photo decoded at the overlay's size.

        The model's input is smaller (and often not the photo's aspect), so the
        photo is decoded once more, straight to the overlay's size: a JPEG in
        draft mode (DCT scaling), so a 6000x4000 photo is never decoded whole for
        a 2-megapixel overlay. The bytes already passed every check of the first
        decode.
        """
        size = fit_within(decoded.width, decoded.height, self.config.outputs.overlay_max_pixels)
        if size == decoded.processed_size:
            return decoded
        return decode_image(data, InputSpec(size=size), self.limits)

    def palette(self, card: ModelCard) -> np.ndarray:
        """The colours to draw a model's classes with (its own, else generated)."""
        key = (card.name, card.palette, len(card.labels))
        palette = self._palettes.get(key)
        if palette is None:
            palette = resolve_palette(len(card.labels), model_palette=card.palette)
            self._palettes[key] = palette
        return palette

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


@dataclass
class Encoded:
    """What :meth:`SegmentationService._encode` made, and each output's time (ms)."""

    classes: list[ClassShare] | None = None
    mask_png: bytes | None = None
    contours: list[dict[str, Any]] | None = None
    rle: list[dict[str, Any]] | None = None
    overlay: Overlay | None = None
    segments: list[dict[str, Any]] | None = None
    ms: dict[str, float] = field(default_factory=dict)


class _Timer:
    """``with timer("contours"):`` adds the block's milliseconds to ``times["contours"]``."""

    def __init__(self, times: dict[str, float]) -> None:
        self.times = times

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = (time.perf_counter() - started) * 1000
            self.times[name] = round(self.times.get(name, 0.0) + spent, 2)


def scaled_class_rle(
    labels: np.ndarray, size: tuple[int, int], names: Sequence[str]
) -> list[ClassRle]:
    """:func:`rle.class_rle` of ``resize_labels(labels, *size)``, without that array.

    The resized map's columns are the small map's columns, each row repeated, so its
    column-major runs follow from where the small map changes: per class the work
    is its number of runs, not the output's pixels (a 6000x4000 mask with a hundred
    classes would otherwise be a hundred full-size masks to compare and encode).
    pycocotools compresses the counts, so the strings are its own.
    """
    width, height = size
    if labels.ndim != 2:
        raise ValueError(f"a label map is 2-D, got shape {labels.shape}")
    if (height, width) == labels.shape:  # nothing to scale: pycocotools' encode is faster
        return class_rle(labels, names)
    rows = nearest_indices(labels.shape[0], height)
    cols = nearest_indices(labels.shape[1], width)
    # Runs of equal source rows: full rows from row_starts[m] on copy one source row.
    row_starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    by_rows = labels[rows[row_starts]]  # (distinct rows, small width)
    pixels = class_pixels(labels, width, height)
    result = []
    for class_id in pixels.ranked():
        inside = by_rows == class_id
        # Changes down each source column, at the full row where they happen.
        change_col, change_m = np.nonzero((inside[1:] != inside[:-1]).T)  # by column
        change_rows = row_starts[change_m + 1]
        per_col = np.bincount(change_col, minlength=inside.shape[1])
        col_offset = np.r_[0, np.cumsum(per_col)[:-1]]
        counts_per_full_col = per_col[cols]
        full_col = np.repeat(np.arange(width), counts_per_full_col)
        first_of_col = np.r_[0, np.cumsum(counts_per_full_col)[:-1]]
        within = np.arange(len(full_col)) - np.repeat(first_of_col, counts_per_full_col)
        positions = change_rows[col_offset[cols][full_col] + within] + full_col * height
        # Changes where one column ends and the next begins, and at the very start.
        first, last = inside[0, cols], inside[-1, cols]
        seams = (np.flatnonzero(last[:-1] != first[1:]) + 1) * height
        start = np.array([0] if first[0] else [], dtype=np.int64)
        changes = np.sort(np.concatenate([start, seams, positions]).astype(np.int64))
        counts = np.diff(np.r_[0, changes, width * height])
        encoded = coco_mask.frPyObjects(
            {"counts": counts.tolist(), "size": [height, width]}, height, width
        )
        result.append(
            ClassRle(
                id=class_id,
                name=class_name(names, class_id),
                pixels=int(counts[1::2].sum()),
                size=(height, width),
                counts=encoded["counts"].decode("ascii"),
            )
        )
    return result


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
