"""Image decode, validation, orientation and downscaling to what a model needs.

Everything here works on bytes and numpy arrays, with Pillow: no Ray, no torch,
no transport types. Memory per request is bounded by :class:`ImageLimits` and by
the model's :class:`InputSpec`, never by the size of an upload: a large JPEG is
decoded in draft mode (DCT scaling) straight to the smallest size that still
covers what the model needs, and label maps are upscaled with nearest-neighbour
index arithmetic rather than by upsampling logits.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from deployments.pipeline.errors import (
    CorruptImage,
    DecodeMemoryExceeded,
    ImageTooLarge,
    SegServeError,
)
from deployments.pipeline.labelmaps import (
    class_pixel_counts,
    fit_within,
    nearest_indices,
    resize_labels,
)
from deployments.pipeline.probe import (
    DEFAULT_FORMATS,
    OPENERS,
    TRANSPOSING_ORIENTATIONS,
    ImageHeader,
    ImageLimits,
    open_image,
    probe_image,
)

__all__ = [
    "DEFAULT_FORMATS",
    "DecodedImage",
    "ImageHeader",
    "ImageLimits",
    "InputSpec",
    "Pixels",
    "class_pixel_counts",
    "decode_image",
    "decode_pixels",
    "fit_within",
    "nearest_indices",
    "probe_image",
    "resize_labels",
    "to_rgb",
]


# Above this downscale factor Pillow may first reduce by an integer box filter
# (``reducing_gap``): much faster on big non-JPEG images, visually identical.
_REDUCING_GAP = 3.0
# Wide-integer and float images are converted this many pixels at a time.
_CHUNK_PIXELS = 1 << 20
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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


def decode_image(
    data: bytes, spec: InputSpec, limits: ImageLimits, header: ImageHeader | None = None
) -> DecodedImage:
    """Decode, validate, orient and resize an uploaded image for a model.

    ``header`` is :func:`probe_image`'s result for these bytes (probed here when
    None): its checks are not repeated. Raises the client errors of :mod:`errors`:
    empty/corrupt or breaking a structural rule (400), too many bytes, pixels or
    decode memory (413), not an image of an accepted format (415). Nothing else
    escapes: every exception of the decode path is a 400 ``corrupt_image``.
    """
    started = time.perf_counter()
    if header is None:
        header = probe_image(data, limits)
    image = open_image(data, limits, [OPENERS.get(header.format, header.format)])
    try:
        return _decode(image, header, spec, limits, started)
    except SegServeError:
        raise
    except MemoryError as e:
        raise DecodeMemoryExceeded(f"out of memory decoding the {header.format} image") from e
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image exceeds the pixel limit: {e}") from e
    except Exception as e:  # decoders raise many types on hostile bytes; none may be a 500
        raise CorruptImage(f"cannot decode {header.format} image: {e}") from e
    finally:
        image.close()


def _decode(
    image: Image.Image, header: ImageHeader, spec: InputSpec, limits: ImageLimits, started: float
) -> DecodedImage:
    if image.size != (header.width, header.height) or image.format != header.format:
        raise CorruptImage("the image header changed between probe and decode")
    orientation = header.orientation
    transposed = orientation in TRANSPOSING_ORIENTATIONS
    width, height = header.display_size
    target_w, target_h = spec.target_size(width, height)
    # Resize as stored, orient the small result: a full-size rotated copy is never made.
    stored_target = (target_h, target_w) if transposed else (target_w, target_h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if image.format in ("JPEG", "MPO"):
            # Draft picks the largest DCT scale (1/2, 1/4, 1/8) that stays >= the request.
            image.draft("RGB", stored_target)
        image.load()
    decoded_size = image.size
    if spec.backend == "cv2":  # OpenCV works on a numpy copy of the full-size image
        needed = header.decode_bytes + 3 * decoded_size[0] * decoded_size[1]
        if needed > limits.max_decode_bytes:
            raise DecodeMemoryExceeded(
                f"resizing this {decoded_size[0]}x{decoded_size[1]} image with OpenCV needs "
                f"about {needed >> 20} MiB; the limit is {limits.max_decode_bytes >> 20} MiB"
            )
    pixels = _to_model_pixels(image, spec, stored_target)
    if orientation not in (None, 1):
        method = _ORIENTATION_TRANSPOSE[orientation]
        pixels = np.ascontiguousarray(np.asarray(Image.fromarray(pixels).transpose(method)))
    if transposed:
        decoded_size = (decoded_size[1], decoded_size[0])
    return DecodedImage(
        pixels=pixels,
        width=width,
        height=height,
        format=str(image.format or ""),
        decoded_size=decoded_size,
        decode_ms=(time.perf_counter() - started) * 1000,
    )


def _to_model_pixels(image: Image.Image, spec: InputSpec, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 at ``size``; grey images are resized grey and widened after."""
    small = _flatten(image)
    if spec.backend == "cv2":
        array = _resize_cv2(np.asarray(small, dtype=np.uint8), *size)
    else:
        if small.size != size:
            gap = _REDUCING_GAP if small.width > _REDUCING_GAP * size[0] else None
            small = small.resize(size, resample=spec.resample, reducing_gap=gap)
        array = np.asarray(small, dtype=np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def _resize_cv2(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    if (pixels.shape[1], pixels.shape[0]) == (width, height):
        return pixels
    import cv2  # only models whose framework resizes with OpenCV ask for it

    return np.ascontiguousarray(cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB at the same size.

    Transparency is composited over white (dropping alpha would expose whatever
    colour the encoder left under transparent pixels). 16- and 32-bit integer
    images keep their full range (value >> 8); float images are taken as 0..1
    when they fit in it, else as 0..255.
    """
    flat = _flatten(image)
    return flat if flat.mode == "RGB" else flat.convert("RGB")


def _flatten(image: Image.Image) -> Image.Image:
    """An "RGB" or "L" image a person would see, allocating one full-size image at most.

    Grey stays grey ("L"), so resizing touches one band and widening to RGB happens at
    the model's size. Wide integer and float images convert in row blocks.
    """
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        # Pasting through the alpha band is the "over" composite, without the two
        # full-size RGBA copies that alpha_composite needs.
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, (0, 0), rgba)
        return background
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _grey_in_blocks(image)
    return image.convert("RGB")


def _grey_in_blocks(image: Image.Image) -> Image.Image:
    width, height = image.size
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _CHUNK_PIXELS // max(1, width))
    blocks = [(y, min(height, y + rows)) for y in range(0, height, rows)]
    scale = 1.0
    if image.mode == "F":
        peak = 0.0
        for top, bottom in blocks:
            values = np.asarray(image.crop((0, top, width, bottom)), dtype=np.float32)
            finite = values[np.isfinite(values)]
            if finite.size:
                peak = max(peak, float(finite.max()))
        scale = 255.0 if peak <= 1.0 else 1.0
    for top, bottom in blocks:
        block = np.asarray(image.crop((0, top, width, bottom)))
        if image.mode == "F":
            values = np.nan_to_num(block.astype(np.float32) * np.float32(scale))
            np.clip(values, 0, 255, out=values)
            out[top:bottom] = np.rint(values).astype(np.uint8)
        else:
            out[top:bottom] = (np.clip(block.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    return Image.fromarray(out)


@dataclass(frozen=True)
class Pixels:
    """Decoded RGB pixels (height x width x 3, uint8) to segment instead of an encoded file.

    The Open Inference Protocol's UINT8 ``image`` tensor; everything after the decode
    (limits on pixels, routing, the model's resize, batching, outputs) is the same path.
    """

    array: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or self.array.shape[2] != 3 or self.array.dtype != np.uint8:
            raise ValueError(f"pixels are HxWx3 uint8, got {self.array.dtype} {self.array.shape}")

    @property
    def size(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[0])


def decode_pixels(data: Pixels, spec: InputSpec, limits: ImageLimits) -> DecodedImage:
    """Decoded pixels through the same resize to the model's input spec as a decoded
    file, within the same pixel limit."""
    started = time.perf_counter()
    width, height = data.size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_pixels} pixels"
        )
    target = spec.target_size(width, height)
    pixels = _to_model_pixels(Image.fromarray(data.array), spec, target)
    return DecodedImage(
        pixels=pixels,
        width=width,
        height=height,
        format="RAW",
        decoded_size=(width, height),
        decode_ms=(time.perf_counter() - started) * 1000,
    )
