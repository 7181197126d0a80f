"""Images the tests make for themselves (a user's clone has no photo folder)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic photo: gradients and a few blocks (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [
            255 * x / max(width - 1, 1),
            255 * y / max(height - 1, 1),
            127 + 100 * np.sin((x + y) / max(width, height) * 6.28),
        ],
        axis=-1,
    )
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(1, width // 2 + 2)), int(rng.integers(1, height // 2 + 2))
        image[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 255, 3)
    clipped: np.ndarray = np.clip(image, 0, 255).astype(np.uint8)
    return clipped


def encode(array_or_image: np.ndarray | Image.Image, fmt: str, **params: object) -> bytes:
    image = (
        array_or_image
        if isinstance(array_or_image, Image.Image)
        else Image.fromarray(array_or_image)
    )
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    return encode(scene(width, height, seed), "JPEG", quality=quality)


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG of one colour whose header claims width x height pixels (~100 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts.append(compressor.compress(row * (height % 1000)))
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )
