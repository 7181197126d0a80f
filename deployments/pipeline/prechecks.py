"""Structural pre-checks of an upload, run on the raw bytes before Pillow parses them.

Some images are cheap to send and expensive to read: a progressive JPEG whose last
scan is repeated thousands of times, megabytes of JPEG fill bytes or empty PNG
chunks (which Pillow's header parsers walk byte by byte or chunk by chunk in
Python), a 16x16 TIFF stored as one gigapixel tile, an RLE BMP that Pillow decodes
pixel by pixel in Python. Each rule here is a bound a legitimate file stays far
inside; breaking one is a 400 whose code names the rule
(:class:`~deployments.pipeline.errors.ImageStructureRejected`). Every walk is
itself bounded: it stops as soon as a count passes its limit, and the searches
over entropy-coded data are regular expressions (C speed), not Python loops.

Files that are merely damaged (truncated, bad lengths) pass through: the decoder
reports them as ``corrupt_image``. These checks reject only what is well formed
enough to be expensive.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deployments.pipeline.errors import ImageStructureRejected, ImageTooLarge

if TYPE_CHECKING:
    from deployments.pipeline.imaging import ImageLimits

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A marker in a JPEG header: its code byte after 0xFF (fill bytes, more 0xFF, may come
# before). Matched as the last 0xFF and the code, not as "a run of 0xFF, then a code":
# that form backtracks through every run with no code after it (quadratic in the run).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff]")
# Inside entropy-coded data 0xFF00 is a stuffed byte and 0xFFD0-D7 are restart markers.
_JPEG_SCAN_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_JPEG_SOS, _JPEG_EOI, _JPEG_SOI = 0xDA, 0xD9, 0xD8
# PPM/PGM/PBM and Pillow's float variant: the magic, then whitespace-separated numbers.
_PPM_SPACE = rb"(?:\s|#[^\r\n]*[\r\n])+"
_PPM_HEADERS = {
    magic: re.compile(re.escape(magic) + (_PPM_SPACE + rb"[-+0-9.eE]+") * count + rb"\s")
    for magic, count in (
        (b"P1", 2), (b"P4", 2), (b"P2", 3), (b"P3", 3), (b"P5", 3), (b"P6", 3), (b"Pf", 3),
    )
}  # fmt: skip


@dataclass(frozen=True)
class StructureFacts:
    """What the walk learned on the way, so nothing parses the bytes for it again."""

    kind: str | None  # the container the magic bytes name ("JPEG", "PNG"...), None if unknown
    scans: int = 0  # JPEG: scans in the first frame
    progressive: bool = False  # JPEG: a progressive frame (whole-image coefficient buffers)
    frames: int | None = None  # PNG: frames an acTL chunk declares
    exif: bytes | None = field(default=None, repr=False)  # PNG: the eXIf chunk, wherever it is


def sniff(data: bytes) -> str | None:
    """The container named by the first bytes (Pillow's format names), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data[:2] in _PPM_HEADERS:
        return "PPM"
    return None


def check_structure(data: bytes, limits: ImageLimits) -> StructureFacts:
    """Run the rules of the container the bytes claim to be, if that format is accepted."""
    kind = sniff(data)
    accepted = limits.formats
    if kind == "JPEG" and ({"JPEG", "MPO"} & accepted):
        return _check_jpeg(data, limits)
    if kind == "PNG" and "PNG" in accepted:
        return _check_png(data, limits)
    if kind == "GIF" and "GIF" in accepted:
        _check_gif(data, limits)
    elif kind == "WEBP" and "WEBP" in accepted:
        _check_webp(data, limits)
    elif kind == "BMP" and "BMP" in accepted:
        _check_bmp(data, limits)
    elif kind == "PPM" and "PPM" in accepted:
        _check_ppm(data, limits)
    return StructureFacts(kind=kind)


def _reject(code: str, message: str) -> ImageStructureRejected:
    return ImageStructureRejected(message, code=code)


def _check_jpeg(data: bytes, limits: ImageLimits) -> StructureFacts:
    pos, markers, fill, scans, progressive = 2, 0, 0, 0, False
    pattern = _JPEG_MARKER
    while True:
        if scans == 0:
            # Bytes between segments are junk or fill; Pillow reads them one at a time.
            # The next marker is looked for only as far as the fill allowance reaches
            # (a longer run breaks the rule wherever it ends). With no marker left, all the
            # rest is fill (so a prefix of the body that breaks the rule is a body that does).
            end = min(len(data), pos + 2 + limits.jpeg_max_fill_bytes - fill)
            match = pattern.search(data, pos, end)
            fill += max(0, (match.end() - 1 if match else end) - pos - 1)
            if fill > limits.jpeg_max_fill_bytes or (match is None and end < len(data)):
                raise _reject(
                    "jpeg_fill_bytes",
                    f"JPEG has more than {limits.jpeg_max_fill_bytes} fill or junk bytes "
                    "between its header segments",
                )
        else:
            match = pattern.search(data, pos)
        if match is None:
            break  # truncated: the decoder says so
        code = match.group(0)[1]
        pos = match.end()
        markers += 1
        if markers > limits.jpeg_max_markers:
            raise _reject(
                "jpeg_too_many_markers",
                f"JPEG has more than {limits.jpeg_max_markers} marker segments in its first frame",
            )
        if code == _JPEG_EOI:
            break  # end of the first frame: later MPO frames are never decoded
        if code in _JPEG_STANDALONE or code == _JPEG_SOI:
            continue
        if pos + 2 > len(data):
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if code in _JPEG_PROGRESSIVE_SOF:
            progressive = True
        if code == _JPEG_SOS:
            if scans == 0 and pos > limits.jpeg_max_header_bytes:
                raise _reject(
                    "jpeg_header_too_large",
                    f"JPEG has {pos} bytes before its first scan; "
                    f"the limit is {limits.jpeg_max_header_bytes}",
                )
            scans += 1
            if scans > limits.jpeg_max_scans:
                raise _reject(
                    "jpeg_too_many_scans",
                    f"JPEG has more than {limits.jpeg_max_scans} scans "
                    "(each scan is a pass over the whole image)",
                )
            pattern = _JPEG_SCAN_MARKER
        pos += length
    if scans == 0 and len(data) > limits.jpeg_max_header_bytes:
        raise _reject(
            "jpeg_header_too_large",
            f"JPEG has no scan in its first {limits.jpeg_max_header_bytes} bytes",
        )
    return StructureFacts(kind="JPEG", scans=scans, progressive=progressive)


def _check_png(data: bytes, limits: ImageLimits) -> StructureFacts:
    pos, chunks, before_idat, ancillary = len(_PNG_SIGNATURE), 0, 0, 0
    seen_idat, frames, exif = False, None, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > limits.png_max_chunks:
            raise _reject(
                "png_too_many_chunks", f"PNG has more than {limits.png_max_chunks} chunks"
            )
        if kind == b"IDAT":
            seen_idat = True
        elif not seen_idat:
            before_idat += 1
            if before_idat > limits.png_max_chunks_before_idat:
                raise _reject(
                    "png_too_many_chunks_before_idat",
                    f"PNG has more than {limits.png_max_chunks_before_idat} chunks "
                    "before its image data",
                )
        # Lower-case first letter: ancillary (text, colour profiles, metadata, APNG frames).
        if kind[0] & 0x20 and kind not in (b"fdAT", b"fcTL"):
            ancillary += length
            if ancillary > limits.png_max_ancillary_bytes:
                raise _reject(
                    "png_ancillary_too_large",
                    f"PNG has more than {limits.png_max_ancillary_bytes} bytes of ancillary chunks",
                )
        body = pos + 8
        if kind == b"eXIf" and exif is None:
            exif = data[body : body + length]
        elif kind == b"acTL" and length >= 4 and body + 4 <= len(data):
            (frames,) = struct.unpack_from(">I", data, body)
        elif kind == b"IEND":
            break
        pos = body + length + 4
    return StructureFacts(kind="PNG", frames=frames, exif=exif)


def _check_gif(data: bytes, limits: ImageLimits) -> None:
    if len(data) < 13:
        return
    packed = data[10]
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    blocks = 0
    while pos < len(data):
        introducer = data[pos]
        if introducer != 0x21:  # an image descriptor, the trailer, or damage: stop here
            return
        pos += 2  # introducer and label
        while pos < len(data) and data[pos]:
            blocks += 1
            if blocks > limits.gif_max_blocks_before_image:
                raise _reject(
                    "gif_too_many_blocks",
                    f"GIF has more than {limits.gif_max_blocks_before_image} extension "
                    "blocks before its first image",
                )
            pos += 1 + data[pos]
        pos += 1


def _check_webp(data: bytes, limits: ImageLimits) -> None:
    # libwebp allocates its canvas when the file is opened: check the canvas first.
    kind, body = data[12:16], 20
    size: tuple[int, int] | None = None
    if kind == b"VP8X" and len(data) >= body + 10:
        width = int.from_bytes(data[body + 4 : body + 7], "little") + 1
        height = int.from_bytes(data[body + 7 : body + 10], "little") + 1
        size = (width, height)
    elif kind == b"VP8 " and len(data) >= body + 10:
        width, height = struct.unpack_from("<HH", data, body + 6)
        size = (width & 0x3FFF, height & 0x3FFF)
    elif kind == b"VP8L" and len(data) >= body + 5:
        (bits,) = struct.unpack_from("<I", data, body + 1)
        size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if size is not None and size[0] * size[1] > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels; "
            f"the limit is {limits.max_pixels} pixels"
        )


def _check_bmp(data: bytes, limits: ImageLimits) -> None:
    if len(data) < 34:
        return
    offset, header_size, width, height = struct.unpack_from("<IIii", data, 10)
    if header_size < 40:
        return  # OS/2 headers have no compression field
    (compression,) = struct.unpack_from("<I", data, 30)
    if compression not in (1, 2):  # BI_RLE8, BI_RLE4: decoded by Pillow in Python
        return
    pixels = abs(width) * abs(height)
    rows = abs(height)
    if pixels > limits.bmp_max_rle_pixels:
        raise _reject(
            "bmp_rle_too_large",
            f"RLE-compressed BMP of {pixels} pixels; the limit for RLE BMPs is "
            f"{limits.bmp_max_rle_pixels} pixels",
        )
    # A real encoder needs at most about a byte per pixel plus an end-of-line per row;
    # more is padding that Pillow's decoder would walk two bytes at a time.
    allowed = pixels + pixels // 64 + 4 * rows + 1024
    if len(data) - offset > allowed:
        raise _reject(
            "bmp_rle_too_large",
            f"RLE-compressed BMP carries {len(data) - offset} bytes for {pixels} pixels",
        )


def _check_ppm(data: bytes, limits: ImageLimits) -> None:
    pattern = _PPM_HEADERS[data[:2]]
    if pattern.match(data, 0, limits.ppm_max_header_bytes) is None and (
        len(data) > limits.ppm_max_header_bytes
    ):
        raise _reject(
            "ppm_header_too_large",
            f"PPM header is longer than {limits.ppm_max_header_bytes} bytes",
        )
