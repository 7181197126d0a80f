"""Hostile and odd uploads, generated, each with the (status, code) the service documents.

Shared by the unit tests of the decode path, the integration tests and the
benchmarks: ``CASES`` lists one input of every class of the hostile-input issue
(scan bombs, fill bytes, empty chunks, wide-integer and float gigabyte decodes,
huge tiles, RLE BMPs, late broken colour profiles) and of those that already
behaved (truncations, dimension bombs, many frames, non-images, orientations).
Every generator is deterministic and builds its file from small parts: the
100-megapixel files are a few hundred kilobytes and never exist decoded here.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tests.images import encode, jpeg, png_bomb, scene

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class HostileCase:
    """One upload and what it must get: status 200 with code None, or (4xx, error code)."""

    name: str
    make: Callable[[], bytes]
    status: int
    code: str | None
    #: Formats accepted for this case, when not the defaults.
    formats: frozenset[str] | None = None
    #: Decodes at the full limits take a few hundred MB and seconds: tests may skip them.
    heavy: bool = False
    #: (width, height) as displayed, for the cases that succeed.
    size: tuple[int, int] | None = field(default=None)


# ------------------------------------------------------------------ building blocks


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_of_rows(width: int, height: int, colour_type: int, bit_depth: int, row: bytes) -> bytes:
    """A PNG whose every row is ``row`` (filter byte included), compressed in pieces."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    batch = max(1, (1 << 22) // len(row))
    block = row * batch
    parts = [compressor.compress(block) for _ in range(height // batch)]
    parts.append(compressor.compress(row * (height % batch)))
    parts.append(compressor.flush())
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def split_png(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk of a well-formed PNG."""
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def join_png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIGNATURE + b"".join(png_chunk(kind, body) for kind, body in chunks)


def small_png(width: int = 16, height: int = 16) -> bytes:
    return encode(scene(width, height), "PNG")


def tiff(
    width: int,
    height: int,
    *,
    bits: int,
    sample_format: int,
    strip: bytes,
    rows_per_strip: int,
    tile: tuple[int, int] | None = None,
) -> bytes:
    """A little-endian, deflate-compressed, one-band TIFF whose strips (or one tile) share
    the bytes ``strip``."""
    pieces = 1 if tile else -(-height // rows_per_strip)
    data_offset = 8
    ifd_offset = data_offset + len(strip)
    entries: list[tuple[int, int, int, int]] = [  # tag, type, count, value
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, 8),  # Adobe deflate
        (262, 3, 1, 1),  # black is zero
        (277, 3, 1, 1),
        (339, 3, 1, sample_format),
    ]
    arrays: list[tuple[int, list[int]]] = []
    if tile:
        entries += [(322, 4, 1, tile[0]), (323, 4, 1, tile[1])]
        arrays += [(324, [data_offset]), (325, [len(strip)])]
    else:
        entries.append((278, 4, 1, rows_per_strip))
        arrays += [(273, [data_offset] * pieces), (279, [len(strip)] * pieces)]
    count = len(entries) + len(arrays)
    extra_offset = ifd_offset + 2 + 12 * count + 4
    extra = b""
    for tag, values in arrays:
        if len(values) == 1:
            entries.append((tag, 4, 1, values[0]))
        else:
            entries.append((tag, 4, len(values), extra_offset + len(extra)))
            extra += struct.pack(f"<{len(values)}I", *values)
    entries.sort()
    ifd = struct.pack("<H", count)
    for tag, kind, n, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, n) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + strip + ifd + extra


def jpeg_segments(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(header up to the first scan, the scans each with its SOS segment, the tail)."""
    first = data.index(b"\xff\xda")
    scans, pos = [], first
    end = data.rindex(b"\xff\xd9")
    while pos < end:
        nxt = data.find(b"\xff\xda", pos + 2)
        # Tables between scans (progressive DHTs) stay with the scan before them.
        stop = end if nxt < 0 else nxt
        scans.append(data[pos:stop])
        pos = stop
    return data[:first], scans, data[end:]


# ------------------------------------------------------------------ hostile inputs


def progressive_scan_bomb(repeats: int = 2000, side: int = 1024) -> bytes:
    """A progressive JPEG whose last scan is repeated: each copy is a few dozen bytes (the
    flat image's refinement is all end-of-band runs) and a pass over every block."""
    flat = Image.new("RGB", (side, side), (120, 130, 140))
    head, scans, tail = jpeg_segments(encode(flat, "JPEG", quality=90, progressive=True))
    return head + b"".join(scans) + scans[-1] * repeats + tail


def jpeg_fill_bytes(count: int = 2 * 1024 * 1024) -> bytes:
    """Megabytes of 0xFF fill bytes before a header segment (legal, and read one by one)."""
    data = jpeg(64, 64)
    return data[:2] + b"\xff" * count + data[2:]


def jpeg_fill_without_marker(count: int = 2 * 1024 * 1024) -> bytes:
    """SOI, then megabytes of 0xFF and no marker after them (a run with no code byte to
    end it: what makes a backtracking marker search quadratic)."""
    return b"\xff\xd8" + b"\xff" * count


def jpeg_ff_run_in_scan(count: int = 2 * 1024 * 1024) -> bytes:
    """A JPEG cut inside its scan data, followed by megabytes of 0xFF."""
    data = jpeg(64, 64)
    return data[: data.index(b"\xff\xda") + 40] + b"\xff" * count


def jpeg_empty_app_segments(count: int = 200_000) -> bytes:
    """Hundreds of thousands of empty APP5 segments after SOI."""
    data = jpeg(64, 64)
    return data[:2] + b"\xff\xe5\x00\x02" * count + data[2:]


def png_many_empty_chunks(count: int = 100_000) -> bytes:
    """A megabyte of empty private ancillary chunks before the image data."""
    chunks = split_png(small_png())
    empty = [(b"prVt", b"")] * count
    return join_png(chunks[:1] + empty + chunks[1:])


def png_many_chunks_after_idat(count: int = 100_000) -> bytes:
    chunks = split_png(small_png())
    return join_png(chunks[:-1] + [(b"prVt", b"")] * count + chunks[-1:])


def ppm_whitespace(count: int = 2 * 1024 * 1024) -> bytes:
    """Megabytes of whitespace inside a PPM header."""
    return b"P6" + b" " * count + b"16 16 255\n" + b"\x80" * (16 * 16 * 3)


def png_16bit_100mp(side: int = 10_000) -> bytes:
    """100 MP of 16-bit grey in about 200 KB."""
    return png_of_rows(side, side, 0, 16, b"\x00" + b"\x12\x34" * side)


def png_rgba_100mp(side: int = 10_000) -> bytes:
    """100 MP of half-transparent RGBA in about 300 KB."""
    return png_of_rows(side, side, 6, 8, b"\x00" + b"\x20\x40\x60\x80" * side)


def tiff_float_100mp(side: int = 10_000, rows_per_strip: int = 500) -> bytes:
    """100 MP of float32 in strips that all point at one compressed block."""
    block = np.full((rows_per_strip, side), 0.25, dtype="<f4").tobytes()
    return tiff(
        side, side, bits=32, sample_format=3, strip=zlib.compress(block, 9),
        rows_per_strip=rows_per_strip,
    )  # fmt: skip


def tiff_huge_tile(side: int = 16, tile: int = 32768) -> bytes:
    """A 16x16 TIFF stored as one tile of a gigapixel (the pixel check sees 256 pixels)."""
    return tiff(
        side, side, bits=8, sample_format=1, strip=zlib.compress(b"\x00" * 4096),
        rows_per_strip=side, tile=(tile, tile),
    )  # fmt: skip


def bmp_rle_eol_per_pixel(width: int = 10_000, height: int = 10_000) -> bytes:
    """An RLE8 BMP of one pixel and an end-of-line per row: Pillow pads every row in Python."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    pixels = b"\x01\x80\x00\x00" * height + b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 0, 0, 256, 0)
    return (
        b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels
    )


def png_broken_iccp_after_idat() -> bytes:
    """A valid PNG with an empty (so damaged) iCCP chunk after its image data (81 bytes):
    Pillow reads it when it finishes loading, and fails with an IndexError."""
    chunks = split_png(encode(Image.new("L", (1, 1), 0), "PNG"))
    return join_png([*chunks[:-1], (b"iCCP", b""), *chunks[-1:]])


# ------------------------------------------------------------------ classes that behaved


def truncated_jpeg() -> bytes:
    data = jpeg(300, 200)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = small_png(300, 200)
    return data[: len(data) // 2]


def jpeg_dimension_bomb() -> bytes:
    """A JPEG whose frame header claims 65000x65000 (SOF0 dimensions rewritten)."""
    data = bytearray(jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def many_frame_gif(frames: int = 1000) -> bytes:
    images = [Image.new("RGB", (8, 8), (i % 256, i // 256, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=10)
    return buffer.getvalue()


def many_frame_apng(frames: int = 300) -> bytes:
    images = [Image.new("RGB", (8, 8), (i % 256, 0, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "PNG", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def many_page_tiff(pages: int = 300) -> bytes:
    images = [Image.new("L", (8, 8), i % 256) for i in range(pages)]
    buffer = io.BytesIO()
    images[0].save(buffer, "TIFF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def exif_oriented_jpeg(orientation: int, width: int = 60, height: int = 20) -> bytes:
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(array), "JPEG", exif=exif, quality=95)


def text_body() -> bytes:
    return b"hello, this is plainly not an image\n" * 20


def svg_body() -> bytes:
    return b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'


def pdf_body() -> bytes:
    return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def heic_header() -> bytes:
    return struct.pack(">I", 24) + b"ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


def _orientation_cases() -> list[HostileCase]:
    cases = []
    for orientation in range(1, 9):
        size = (20, 60) if orientation >= 5 else (60, 20)
        cases.append(
            HostileCase(
                f"exif_orientation_{orientation}",
                lambda o=orientation: exif_oriented_jpeg(o),  # type: ignore[misc]
                200,
                None,
                size=size,
            )
        )
    return cases


CASES: list[HostileCase] = [
    HostileCase("progressive_scan_bomb", progressive_scan_bomb, 400, "jpeg_too_many_scans"),
    HostileCase("jpeg_fill_bytes", jpeg_fill_bytes, 400, "jpeg_fill_bytes"),
    HostileCase("jpeg_fill_without_marker", jpeg_fill_without_marker, 400, "jpeg_fill_bytes"),
    HostileCase("jpeg_ff_run_in_scan", jpeg_ff_run_in_scan, 400, "corrupt_image"),
    HostileCase("jpeg_empty_app_segments", jpeg_empty_app_segments, 400, "jpeg_too_many_markers"),
    HostileCase(
        "png_many_empty_chunks", png_many_empty_chunks, 400, "png_too_many_chunks_before_idat"
    ),
    HostileCase(
        "png_many_chunks_after_idat", png_many_chunks_after_idat, 400, "png_too_many_chunks"
    ),
    HostileCase("ppm_whitespace_not_accepted", ppm_whitespace, 415, "unsupported_image"),
    HostileCase(
        "ppm_whitespace",
        ppm_whitespace,
        400,
        "ppm_header_too_large",
        formats=frozenset({"PPM", "PNG"}),
    ),
    HostileCase("png_16bit_100mp", png_16bit_100mp, 200, None, heavy=True, size=(10_000, 10_000)),
    HostileCase("tiff_float_100mp", tiff_float_100mp, 200, None, heavy=True, size=(10_000, 10_000)),
    HostileCase("png_rgba_100mp", png_rgba_100mp, 200, None, heavy=True, size=(10_000, 10_000)),
    HostileCase("tiff_huge_tile", tiff_huge_tile, 400, "tiff_tile_too_large"),
    HostileCase("bmp_rle_eol_per_pixel", bmp_rle_eol_per_pixel, 400, "bmp_rle_too_large"),
    HostileCase("png_broken_iccp_after_idat", png_broken_iccp_after_idat, 400, "corrupt_image"),
    HostileCase("truncated_jpeg", truncated_jpeg, 400, "corrupt_image"),
    HostileCase("truncated_png", truncated_png, 400, "corrupt_image"),
    HostileCase("png_dimension_bomb", png_bomb, 413, "image_too_large"),
    HostileCase("jpeg_dimension_bomb", jpeg_dimension_bomb, 413, "image_too_large"),
    HostileCase("many_frame_gif", many_frame_gif, 200, None, size=(8, 8)),
    HostileCase("many_frame_apng", many_frame_apng, 200, None, size=(8, 8)),
    HostileCase("many_page_tiff", many_page_tiff, 200, None, size=(8, 8)),
    HostileCase("text", text_body, 415, "unsupported_image"),
    HostileCase("svg", svg_body, 415, "unsupported_image"),
    HostileCase("pdf", pdf_body, 415, "unsupported_image"),
    HostileCase("heic_header", heic_header, 415, "unsupported_image"),
    HostileCase("empty", lambda: b"", 400, "empty_body"),
    *_orientation_cases(),
]
