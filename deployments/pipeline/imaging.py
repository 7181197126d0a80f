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
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from deployments.pipeline.errors import (
    CorruptImage,
    DecodeMemoryExceeded,
    ImageStructureRejected,
    ImageTooLarge,
    MalformedRequest,
    PayloadTooLarge,
    SegServeError,
    UnsupportedImage,
)
from deployments.pipeline.prechecks import StructureFacts, check_structure

#: Formats accepted by default (Pillow's names). MPO is a JPEG with extra frames
#: (many phone cameras write it); only its first frame is used, as for GIF and TIFF.
DEFAULT_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF"})

_EXIF_ORIENTATION = 0x0112
# Orientations 5-8 transpose the image: stored width is displayed height.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# Above this downscale factor Pillow may first reduce by an integer box filter
# (``reducing_gap``): much faster on big non-JPEG images, visually identical.
_REDUCING_GAP = 3.0
# Pillow formats without an opener of their own, and the plugin that opens them.
_OPENERS = {"MPO": "JPEG"}
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323
# Wide-integer and float images are converted this many pixels at a time.
_CHUNK_PIXELS = 1 << 20
# Decoder line buffers, zlib state and one block's conversion temporaries, measured
# (a 100 MP 16-bit PNG: 7 MB above its per-pixel terms), with room to spare.
_FIXED_DECODE_BYTES = 64 << 20
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


@dataclass(frozen=True)
class ImageLimits:
    """Per-request bounds; every one is a configuration value, built by
    ``LimitsConfig.image_limits()`` (deployments/config/ holds the defaults and their reasons).

    Besides bytes and pixels, each structural rule of :mod:`prechecks` has its bound
    here; a legitimate file stays far inside every one of them.
    """

    max_bytes: int
    max_pixels: int
    formats: frozenset[str]
    #: Memory one decode may use: the stored image, conversion buffers and decoder state,
    #: estimated from the header before anything is decoded (413 above).
    max_decode_bytes: int
    #: JPEG: scans in the first frame (each is a pass over the whole image; encoders
    #: write 1, or about 10 when progressive).
    jpeg_max_scans: int
    #: JPEG: scans x stored pixels (the entropy decoder's work; about 3 ns each on one
    #: core): 15 scans at 100 MP, 64 scans up to 23 MP.
    jpeg_max_scan_pixels: int
    #: JPEG: marker segments in the first frame (real files have a few dozen).
    jpeg_max_markers: int
    #: JPEG: bytes before the first scan (EXIF, ICC and XMP segments included).
    jpeg_max_header_bytes: int
    #: JPEG: fill (0xFF) and junk bytes between header segments.
    jpeg_max_fill_bytes: int
    #: PNG: chunks before the first IDAT (metadata chunks).
    png_max_chunks_before_idat: int
    #: PNG: chunks in the whole file (IDAT and APNG frame chunks included).
    png_max_chunks: int
    #: PNG: bytes in ancillary chunks (text, profiles, metadata), APNG frames excepted.
    png_max_ancillary_bytes: int
    #: GIF: extension sub-blocks before the first image.
    gif_max_blocks_before_image: int
    #: TIFF: a tile larger than the image may have at most this many pixels.
    tiff_max_tile_pixels: int
    #: BMP: pixels of an RLE-compressed BMP (Pillow decodes RLE in Python).
    bmp_max_rle_pixels: int
    #: PPM (when accepted): bytes of the text header.
    ppm_max_header_bytes: int


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, read once by :func:`probe_image` and reused by the decode.

    Small and picklable: it travels to a decode worker with the bytes.
    """

    format: str
    width: int  # as stored, before EXIF orientation
    height: int
    mode: str  # Pillow's mode of the stored image
    bytes_per_pixel: int  # Pillow's in-memory bytes per pixel of that mode
    frames: int | None  # None where counting would mean walking every frame (GIF, TIFF)
    tile: tuple[int, int] | None  # TIFF tile (width, height), None when striped or not TIFF
    orientation: int | None  # EXIF orientation 1-8, None when absent or unreadable
    decode_bytes: int  # estimated peak memory of decoding it at full size
    progressive: bool = False
    scans: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as displayed: EXIF orientations 5-8 swap the stored sides."""
        if self.orientation in _TRANSPOSING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


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


def probe_image(data: bytes, limits: ImageLimits) -> ImageHeader:
    """Read and vet an upload's header without decoding pixels.

    Opens the bytes only with the accepted formats' Pillow plugins, after the
    structural pre-checks of :mod:`prechecks`; checks pixels and the estimated
    decode memory. Raises 400 (empty, corrupt, a structural rule), 413 (bytes,
    pixels, decode memory) or 415 (not an accepted format). Bounded work: every
    walk over the bytes stops at its configured limit.
    """
    if not data:
        raise MalformedRequest("empty request body: send the image bytes", code="empty_body")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"request body is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    facts = check_structure(data, limits)
    image = _open(data, limits, sorted(limits.formats))
    try:
        return _read_header(image, facts, limits)
    except SegServeError:
        raise
    except Exception as e:  # plugins raise many types on hostile headers
        raise CorruptImage(f"cannot read the {image.format} header: {e}") from e
    finally:
        image.close()


def _read_header(image: Image.Image, facts: StructureFacts, limits: ImageLimits) -> ImageHeader:
    stored_w, stored_h = image.size
    if stored_w < 1 or stored_h < 1:
        raise CorruptImage(f"image has no pixels ({stored_w}x{stored_h})")
    pixels = stored_w * stored_h
    if pixels > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {stored_w}x{stored_h} = {pixels} pixels; "
            f"the limit is {limits.max_pixels} pixels"
        )
    fmt = str(image.format)
    if facts.scans * pixels > limits.jpeg_max_scan_pixels:
        raise ImageStructureRejected(
            f"JPEG has {facts.scans} scans of {pixels} pixels; the limit is "
            f"{limits.jpeg_max_scan_pixels} scan-pixels",
            code="jpeg_too_many_scans",
        )
    tile = _tiff_tile(image, pixels, limits) if fmt == "TIFF" else None
    bpp = _bytes_per_pixel(image.mode)
    progressive = facts.progressive or bool(image.info.get("progressive"))
    decode_bytes = _decode_bytes(fmt, image.mode, pixels, bpp, tile, progressive)
    if decode_bytes > limits.max_decode_bytes:
        raise DecodeMemoryExceeded(
            f"decoding this {stored_w}x{stored_h} {image.mode} {fmt} image needs about "
            f"{decode_bytes >> 20} MiB; the limit is {limits.max_decode_bytes >> 20} MiB"
        )
    frames: int | None = None
    if fmt in ("PNG", "JPEG", "MPO", "WEBP"):  # known from the header; GIF/TIFF would walk
        frames = int(getattr(image, "n_frames", 1))
    return ImageHeader(
        format=fmt,
        width=stored_w,
        height=stored_h,
        mode=image.mode,
        bytes_per_pixel=bpp,
        frames=frames,
        tile=tile,
        orientation=_orientation(image, facts),
        decode_bytes=decode_bytes,
        progressive=progressive,
        scans=facts.scans,
    )


def _tiff_tile(image: Image.Image, pixels: int, limits: ImageLimits) -> tuple[int, int] | None:
    tags = getattr(image, "tag_v2", {})
    tile_w, tile_h = tags.get(_TIFF_TILE_WIDTH), tags.get(_TIFF_TILE_LENGTH)
    if not tile_w or not tile_h:
        return None
    tile_w, tile_h = int(tile_w), int(tile_h)
    if tile_w * tile_h > max(pixels, limits.tiff_max_tile_pixels):
        raise ImageStructureRejected(
            f"TIFF of {image.width}x{image.height} is stored in tiles of {tile_w}x{tile_h}",
            code="tiff_tile_too_large",
        )
    return tile_w, tile_h


def _bytes_per_pixel(mode: str) -> int:
    """Pillow's in-memory footprint: 8-bit multi-band modes take 4 bytes a pixel."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _decode_bytes(
    fmt: str, mode: str, pixels: int, bpp: int, tile: tuple[int, int] | None, progressive: bool
) -> int:
    """Upper estimate of a full-size decode's peak memory (what :func:`decode_image` allocates).

    The stored image, plus what the conversion to RGB allocates at full size (see
    :func:`_flatten`; an OpenCV resize's numpy copy is added by the decode, which
    knows the model), plus decoder state: libjpeg keeps every DCT
    coefficient (2 bytes a sample) of a progressive frame, libwebp two RGBA canvases,
    libtiff one tile.
    """
    if mode in ("RGB", "L"):
        working = 0  # resized as they are
    elif mode.startswith("I;16") or mode in ("I", "F"):
        working = 1  # the 8-bit grey image, filled in row blocks
    elif mode == "RGBA":
        working = 4  # the white background it is composited on
    else:
        working = 4 + 4  # a conversion to RGBA (or RGB) first, then the background
    decoder = 0
    if fmt in ("JPEG", "MPO") and progressive:
        decoder = 2 * max(1, len(mode) if mode in ("RGB", "CMYK", "L", "YCbCr") else 3)
    elif fmt == "WEBP":
        decoder = 8
    tile_bytes = tile[0] * tile[1] * bpp if tile else 0
    return pixels * (bpp + working + decoder) + tile_bytes + _FIXED_DECODE_BYTES


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
    image = _open(data, limits, [_OPENERS.get(header.format, header.format)])
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
    transposed = orientation in _TRANSPOSING_ORIENTATIONS
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


def _open(data: bytes, limits: ImageLimits, formats: list[str]) -> Image.Image:
    Image.init()
    # Pillow's own bomb check follows the configured limit (ours, checked after, is exact).
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    # MPO and friends have no opener of their own (JPEG's opener returns them).
    openers = sorted(f for f in formats if f in Image.OPEN)
    accepted = ", ".join(sorted(limits.formats))
    try:
        with warnings.catch_warnings():
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
    except MemoryError as e:
        raise DecodeMemoryExceeded("out of memory reading the image header") from e
    except Exception as e:  # plugins raise many types on hostile headers
        raise CorruptImage(f"cannot read the image header: {e}") from e
    if image.format not in limits.formats:
        image.close()
        raise UnsupportedImage(f"{image.format} images are not accepted here ({accepted})")
    return image


def _orientation(image: Image.Image, facts: StructureFacts) -> int | None:
    try:
        if image.format == "PNG":
            # PngImageFile.getexif() decodes the whole image to look for a late eXIf
            # chunk; the pre-check walk already found it wherever it was.
            if facts.exif is None:
                return None
            exif = Image.Exif()
            exif.load(facts.exif)
        else:
            exif = image.getexif()
        value = exif.get(_EXIF_ORIENTATION)
    except Exception:  # a damaged EXIF block should not reject a readable image
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


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
