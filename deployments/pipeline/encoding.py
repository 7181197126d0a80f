"""Every output a client may ask for, made from the model's bounded label map.

:class:`OutputEncoder` turns one prediction into the class table, the label PNG,
COCO RLE, contours, the overlay and the IMAGE segments, each timed; the service
calls it once per request, in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployments.config import GatewayConfig
from deployments.contract import ModelCard
from deployments.pipeline.contours import class_contours
from deployments.pipeline.image_contract import segments as image_segments
from deployments.pipeline.imaging import (
    DecodedImage,
    ImageLimits,
    InputSpec,
    Pixels,
    decode_image,
    decode_pixels,
    fit_within,
    resize_labels,
)
from deployments.pipeline.options import (
    IMAGE_SEGMENTS,
    LABEL_MAP_OUTPUT,
    DrawOptions,
    SegmentOptions,
)
from deployments.pipeline.outputs import class_table, encode_label_png
from deployments.pipeline.overlay import overlay_image
from deployments.pipeline.palette import resolve_palette
from deployments.pipeline.rle import scaled_class_rle
from deployments.protocols.wire import ClassShare, Overlay


class OutputEncoder:
    """The outputs of one gateway's configuration (``gateway.outputs``, ``gateway.image``)."""

    def __init__(self, config: GatewayConfig, limits: ImageLimits) -> None:
        self.config = config
        self.limits = limits
        self._palettes: dict[tuple[object, ...], np.ndarray] = {}

    def encode(
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
        full: np.ndarray | None = None
        if LABEL_MAP_OUTPUT in wanted:  # kept for the caller; the PNG reuses it
            with timer(LABEL_MAP_OUTPUT):
                full = encoded.labels = resize_labels(labels, *mask_size)
        if "mask" in wanted:
            with timer("mask"):
                encoded.mask_png = encode_label_png(
                    resize_labels(labels, *mask_size) if full is None else full,
                    self.config.png_compress_level,
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
                raise ValueError("outputs=overlay needs the photo: see prefetch_overlay_photo")
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

    def prefetch_overlay_photo(
        self, data: bytes | Pixels, decoded: DecodedImage, options: SegmentOptions
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

    def overlay_photo(self, data: bytes | Pixels, decoded: DecodedImage) -> DecodedImage:
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
        if isinstance(data, Pixels):
            return decode_pixels(data, InputSpec(size=size), self.limits)
        return decode_image(data, InputSpec(size=size), self.limits)

    def palette(self, card: ModelCard) -> np.ndarray:
        """The colours to draw a model's classes with (its own, else generated)."""
        key = (card.name, card.palette, len(card.labels))
        palette = self._palettes.get(key)
        if palette is None:
            palette = resolve_palette(len(card.labels), model_palette=card.palette)
            self._palettes[key] = palette
        return palette


@dataclass
class Encoded:
    """What :meth:`OutputEncoder.encode` made, and each output's time (ms)."""

    classes: list[ClassShare] | None = None
    mask_png: bytes | None = None
    contours: list[dict[str, Any]] | None = None
    rle: list[dict[str, Any]] | None = None
    overlay: Overlay | None = None
    segments: list[dict[str, Any]] | None = None
    #: The label map at the mask's size (``LABEL_MAP_OUTPUT``).
    labels: np.ndarray | None = None
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
