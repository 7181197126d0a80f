"""Image decode, validation, orientation and downscaling; label-map resizing.

Everything here works on bytes and numpy arrays, with Pillow: no Ray, no torch,
no transport types. Memory per request is bounded by :class:`ImageLimits` and by
the model's :class:`InputSpec`, never by the size of an upload: a large JPEG is
decoded in draft mode (DCT scaling) straight to the smallest size that still
covers what the model needs, and label maps are upscaled with nearest-neighbour
index arithmetic rather than by upsampling logits.
"""

from __future__ import annotations

import io
import math
import struct
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deployments.pipeline.errors import (
    CorruptImage,
    ImageTooLarge,
    MalformedRequest,
    PayloadTooLarge,
    UnsupportedImage,
)

#: Formats accepted by default (Pillow's names). MPO is a JPEG with extra frames
#: (many phone cameras write it); only its first frame is used, as for GIF and TIFF.
DEFAULT_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF"})

_EXIF_ORIENTATION = 0x0112
# Orientations 5-8 transpose the image: stored width is displayed height.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# Above this downscale factor Pillow may first reduce by an integer box filter
# (``reducing_gap``): much faster on big non-JPEG images, visually identical.
_REDUCING_GAP = 3.0


@dataclass(frozen=True)
class InputSpec:
    """What a model wants handed to it, decided by its adapter.

    Exactly one of ``size`` (resize to exactly this width x height, as
    HuggingFace's SegFormer processor does) or ``scale`` (keep the aspect ratio
    and fit inside: long side <= max(scale), short side <= min(scale), as
    MMSegmentation's ``Resize(keep_ratio=True)`` does) is set.
    """

    size: tuple[int, int] | None = None
    scale: tuple[int, int] | None = None
    resample: int = Image.Resampling.BILINEAR
    #: "pil": Pillow's (antialiased) resize, as HuggingFace processors do; "cv2":
    #: OpenCV's INTER_LINEAR, as MMSegmentation's ``Resize`` (mmcv.imresize) does.
    backend: str = "pil"
    #: The adapter pads its batch to a multiple of this; informational for the gateway.
    size_divisor: int = 1
    #: How a keep-ratio size is rounded: "half_up" as mmcv's ``rescale_size``,
    #: "half_even" (Python's ``round``) as PaddleSeg's.
    rounding: str = "half_up"
    #: Each side of the resize target is rounded up to a multiple of this
    #: (PaddleSeg's ``Resize(size_divisor=...)`` resizes to it, it does not pad).
    size_multiple: int = 1

    def __post_init__(self) -> None:
        if (self.size is None) == (self.scale is None):
            raise ValueError("InputSpec needs exactly one of size or scale")
        if self.rounding not in ("half_up", "half_even"):
            raise ValueError(f"unknown rounding {self.rounding!r}")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the model should see for an image of this size."""
        if self.size is not None:
            target = self.size
        else:
            assert self.scale is not None
            long_edge, short_edge = max(self.scale), min(self.scale)
            factor = min(long_edge / max(width, height), short_edge / min(width, height))
            if self.rounding == "half_even":
                target = (round(width * factor), round(height * factor))
            else:  # as mmcv.rescale_size does, so sizes match MMSegmentation's exactly
                target = (int(width * factor + 0.5), int(height * factor + 0.5))
        multiple = self.size_multiple
        return (
            max(multiple, math.ceil(target[0] / multiple) * multiple),
            max(multiple, math.ceil(target[1] / multiple) * multiple),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "size": list(self.size) if self.size else None,
            "scale": list(self.scale) if self.scale else None,
            "size_divisor": self.size_divisor,
            "size_multiple": self.size_multiple,
            "resize": self.backend,
        }


@dataclass(frozen=True)
class ImageLimits:
    """Per-request bounds; every one is a configuration value."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000
    formats: frozenset[str] = DEFAULT_FORMATS


@dataclass
class DecodedImage:
    """An image ready for a model: pixels at the model's size, and what it was."""

    pixels: np.ndarray  # (height, width, 3) uint8 at the processed size
    width: int  # original width after EXIF orientation
    height: int
    format: str
    decoded_size: tuple[int, int]  # what was actually decoded (smaller in draft mode)
    decode_ms: float = field(default=0.0)

    @property
    def processed_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def decode_image(data: bytes, spec: InputSpec, limits: ImageLimits) -> DecodedImage:
    """Decode, validate, orient and resize an uploaded image for a model.

    Raises the client errors of :mod:`errors`: empty/corrupt (400), too many bytes
    or pixels (413), not an image of an accepted format (415).
    """
    started = time.perf_counter()
    if not data:
        raise MalformedRequest("empty request body: send the image bytes", code="empty_body")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"request body is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    image = _open(data, limits)
    stored_w, stored_h = image.size
    if stored_w < 1 or stored_h < 1:
        raise CorruptImage(f"image has no pixels ({stored_w}x{stored_h})")
    if stored_w * stored_h > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {stored_w}x{stored_h} = {stored_w * stored_h} pixels; "
            f"the limit is {limits.max_pixels} pixels"
        )
    orientation = _orientation(image)
    transposed = orientation in _TRANSPOSING_ORIENTATIONS
    width, height = (stored_h, stored_w) if transposed else (stored_w, stored_h)
    target_w, target_h = spec.target_size(width, height)
    try:
        if image.format in ("JPEG", "MPO"):
            # Draft picks the largest DCT scale (1/2, 1/4, 1/8) that stays >= the request.
            request = (target_h, target_w) if transposed else (target_w, target_h)
            image.draft("RGB", request)
        image.load()
        decoded_size = image.size
        if orientation not in (None, 1):
            image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        if spec.backend == "cv2":
            pixels = _resize_cv2(np.asarray(rgb, dtype=np.uint8), target_w, target_h)
        else:
            if rgb.size != (target_w, target_h):
                gap = _REDUCING_GAP if rgb.width > _REDUCING_GAP * target_w else None
                rgb = rgb.resize((target_w, target_h), resample=spec.resample, reducing_gap=gap)
            pixels = np.asarray(rgb, dtype=np.uint8)
    except Exception as e:  # decoders raise many types on hostile bytes; none may be a 500
        raise CorruptImage(f"cannot decode {image.format} image: {e}") from e
    return DecodedImage(
        pixels=pixels,
        width=width,
        height=height,
        format=str(image.format or ""),
        decoded_size=decoded_size,
        decode_ms=(time.perf_counter() - started) * 1000,
    )


def _resize_cv2(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    if (pixels.shape[1], pixels.shape[0]) == (width, height):
        return pixels
    import cv2  # only models whose framework resizes with OpenCV ask for it

    return np.ascontiguousarray(cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR))


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    Image.init()
    # MPO and friends have no opener of their own (JPEG's opener returns them).
    openers = sorted(f for f in limits.formats if f in Image.OPEN)
    accepted = ", ".join(sorted(limits.formats))
    try:
        with warnings.catch_warnings():
            # Our own pixel limit (checked right after) is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=openers)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(
            f"image dimensions exceed the limit of {limits.max_pixels} pixels: {e}"
        ) from e
    except UnidentifiedImageError as e:
        raise UnsupportedImage(
            f"the body is not an image in an accepted format ({accepted})"
        ) from e
    except Exception as e:  # plugins raise many types on hostile headers
        raise CorruptImage(f"cannot read the image header: {e}") from e
    if image.format not in limits.formats:
        raise UnsupportedImage(f"{image.format} images are not accepted here ({accepted})")
    return image


def _orientation(image: Image.Image) -> int | None:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION)
    except (OSError, SyntaxError, ValueError, struct.error):
        return None  # a damaged EXIF block should not reject a readable image
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparency is composited over white (dropping alpha would expose whatever
    colour the encoder left under transparent pixels). 16- and 32-bit integer
    images keep their full range (value >> 8); float images are taken as 0..1
    when they fit in it, else as 0..255.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        finite = values[np.isfinite(values)]
        peak = float(finite.max()) if finite.size else 0.0
        scaled = values * 255.0 if peak <= 1.0 else values
        gray = np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return image.convert("RGB")


def fit_within(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio and at most ``max_pixels`` pixels."""
    if width * height <= max_pixels:
        return width, height
    factor = math.sqrt(max_pixels / (width * height))
    w, h = max(1, math.floor(width * factor)), max(1, math.floor(height * factor))
    if w * h > max_pixels:  # extreme aspect ratios: one side was clamped to 1
        if w == 1:
            h = max_pixels
        else:
            w = max_pixels // h
    return w, h


def nearest_indices(source: int, target: int) -> np.ndarray:
    """Source index of each target index for a nearest-neighbour resize (centre-aligned)."""
    positions = (np.arange(target, dtype=np.float64) + 0.5) * (source / target)
    return np.minimum(positions.astype(np.int64), source - 1)


def resize_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map; never mixes class ids."""
    src_h, src_w = labels.shape
    if (src_w, src_h) == (width, height):
        return labels
    rows = nearest_indices(src_h, height)
    cols = nearest_indices(src_w, width)
    return np.ascontiguousarray(labels.take(rows, axis=0).take(cols, axis=1))


def class_pixel_counts(labels: np.ndarray, width: int, height: int, num_classes: int) -> np.ndarray:
    """Pixels per class that ``resize_labels(labels, width, height)`` would hold.

    Computed on the small label map (each source pixel weighted by how many target
    pixels copy it), so the class table of a 6000x4000 photo never needs the
    full-size mask.
    """
    src_h, src_w = labels.shape
    row_weight = np.bincount(nearest_indices(src_h, height), minlength=src_h)
    col_weight = np.bincount(nearest_indices(src_w, width), minlength=src_w)
    weights = np.outer(row_weight, col_weight).ravel().astype(np.float64)
    size = max(num_classes, int(labels.max()) + 1 if labels.size else 0)
    counts = np.bincount(labels.ravel(), weights=weights, minlength=size)
    return np.rint(counts).astype(np.int64)
