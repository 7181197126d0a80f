"""An upload's header, read once and vetted before any pixel is decoded.

:func:`probe_image` opens the bytes only with the accepted formats' Pillow
plugins, after the structural pre-checks, and estimates the memory a full decode
would take; its :class:`ImageHeader` is reused by the decode.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

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
from deployments.pipeline.prechecks import StructureFacts, check_structure, sniff

#: Formats accepted by default (Pillow's names). MPO is a JPEG with extra frames
#: (many phone cameras write it); only its first frame is used, as for GIF and TIFF.
DEFAULT_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF"})
_EXIF_ORIENTATION = 0x0112
# Orientations 5-8 transpose the image: stored width is displayed height.
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# Pillow formats without an opener of their own, and the plugin that opens them.
OPENERS = {"MPO": "JPEG"}
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323
# Decoder line buffers, zlib state and one block's conversion temporaries, measured
# (a 100 MP 16-bit PNG: 7 MB above its per-pixel terms), with room to spare.
_FIXED_DECODE_BYTES = 64 << 20


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
        if self.orientation in TRANSPOSING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


def probe_image(data: bytes, limits: ImageLimits) -> ImageHeader:
    """Read and vet an upload's header without decoding pixels.

    Opens the bytes only with the accepted formats' Pillow plugins, after the
    structural pre-checks of :mod:`prechecks`; checks pixels and the estimated
    decode memory. Raises 400 (empty, corrupt, a structural rule), 413 (bytes,
    pixels, decode memory) or 415 (not an accepted format). Bounded work: every
    walk over the bytes stops at its configured limit.
    """
    refuse_at_once(data, limits)
    facts = check_structure(data, limits)
    image = open_image(data, limits, sorted(limits.formats))
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
        orientation=exif_orientation(image, facts),
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


def refuse_at_once(data: bytes, limits: ImageLimits) -> None:
    """The refusals that need only the body's length and first 16 bytes: empty, too
    large, or no accepted format's Pillow opener accepts the prefix (what ``Image.open``
    tries first, so the answer is the one :func:`open_image` would give).

    Constant time: the gateway runs this before an upload crosses into a decode worker,
    so junk bodies cost no copy to a worker.
    """
    if not data:
        raise MalformedRequest("empty request body: send the image bytes", code="empty_body")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"request body is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    _refuse_unknown_magic(data[:16], limits)


def _refuse_unknown_magic(head: bytes, limits: ImageLimits) -> None:
    """415 unless an accepted format's Pillow opener takes the first 16 bytes."""
    Image.init()
    for name in limits.formats:
        opener = Image.OPEN.get(name)
        if opener is not None and (opener[1] is None or opener[1](head)):
            return
    accepted = ", ".join(sorted(limits.formats))
    raise UnsupportedImage(f"the body is not an image in an accepted format ({accepted})")


#: How much of a body :func:`refuse_prefix` walks: enough for every fill-byte, chunk and
#: scan bomb the pre-checks know, little enough to walk on the gateway's event loop.
PREFIX_CHECK_BYTES = 64 * 1024


def refuse_prefix(prefix: bytes, limits: ImageLimits) -> None:
    """The refusals a body's first :data:`PREFIX_CHECK_BYTES` already decide: no accepted
    format's opener takes the first 16 bytes, or a JPEG/PNG structural rule is broken
    within the prefix (fill bytes, markers, scans, chunks before the image data).

    Every rule counts upwards as the bytes go on, so a prefix that breaks one is a body
    that breaks it: the gateway runs this as the first bytes arrive and answers without
    reading (or copying to a worker) the rest. Bounded time: the walk sees at most the
    prefix, in C regular expressions and a loop of a few thousand steps at worst.
    """
    head = prefix[:16]
    if len(head) < 16:
        return  # judged once the whole (short) body is here
    _refuse_unknown_magic(head, limits)
    if sniff(prefix) in ("JPEG", "PNG"):
        check_structure(prefix[:PREFIX_CHECK_BYTES], limits)


def open_image(data: bytes, limits: ImageLimits, formats: list[str]) -> Image.Image:
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


def exif_orientation(image: Image.Image, facts: StructureFacts) -> int | None:
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
