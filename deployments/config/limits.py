"""Limits on what one request may cost: bytes, pixels, decode memory and time."""

from __future__ import annotations

from pydantic import Field

from deployments.config.base import StrictModel
from deployments.pipeline.imaging import DEFAULT_FORMATS, ImageLimits


class LimitsConfig(StrictModel):
    """Bounds on one request: bytes, time, pixels, decode memory and the image's structure.

    Every structural bound is one the files cameras, phones and editors write stay far
    inside; breaking one is a 400 whose code names the rule.
    """

    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Largest request body (413 above). Over gRPC, Ray's proxy is started with a message
    limit a little above it (``RAY_SERVE_GRPC_MAX_MESSAGE_SIZE``, see the README)."""

    max_image_pixels: int = Field(default=100_000_000, ge=1)
    """Largest image, width x height as stored (413 above; stops decompression bombs)."""

    formats: list[str] = Field(default_factory=lambda: sorted(DEFAULT_FORMATS))
    """Accepted image formats, by Pillow name."""

    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Longest time reading one HTTP request body may take (408 above): a client trickling
    bytes cannot hold a gateway slot for the whole request timeout."""

    max_decode_bytes: int = Field(default=1 << 30, ge=1 << 20)
    """Memory one decode may use: the stored image, conversion buffers and decoder state,
    estimated from the header before anything is decoded (413 ``decode_memory_exceeded``)."""

    decode_workers: int = Field(default=2, ge=0, le=256)
    """Decode worker processes per gateway replica; a decode past ``decode_timeout_s`` is
    killed with its worker. 0 decodes in a thread of the gateway (nothing can stop a decode
    there; the structural bounds still hold)."""

    decode_queue: int = Field(default=64, ge=0, le=4096)
    """Decodes waiting for a worker; the next one gets 503 ``overloaded`` at once. A queued
    decode holds only its upload (already bounded by ``max_request_bytes``), so this
    follows the gateway's ``max_ongoing_requests`` (64): a burst the gateway accepts is
    decoded in turn, not refused."""

    decode_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """Longest one decode may run (or what is left of the request's budget, if less); the
    request gets 400 ``decode_timeout``."""

    jpeg_max_scans: int = Field(default=64, ge=1)
    """JPEG: scans in the first frame (each is a pass over the whole image; encoders write
    1, or about 10 when progressive)."""

    jpeg_max_scan_pixels: int = Field(default=1_500_000_000, ge=1)
    """JPEG: scans x stored pixels (the entropy decoder's work; about 3 ns each on one
    core): 15 scans at 100 MP, 64 scans up to 23 MP."""

    jpeg_max_markers: int = Field(default=512, ge=8)
    """JPEG: marker segments in the first frame (real files have a few dozen)."""

    jpeg_max_header_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """JPEG: bytes before the first scan (EXIF, ICC and XMP segments included)."""

    jpeg_max_fill_bytes: int = Field(default=16 * 1024, ge=0)
    """JPEG: fill (0xFF) and junk bytes between header segments."""

    png_max_chunks_before_idat: int = Field(default=256, ge=4)
    """PNG: chunks before the first IDAT (metadata chunks)."""

    png_max_chunks: int = Field(default=65536, ge=4)
    """PNG: chunks in the whole file (IDAT and APNG frame chunks included)."""

    png_max_ancillary_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    """PNG: bytes in ancillary chunks (text, profiles, metadata), APNG frames excepted."""

    gif_max_blocks_before_image: int = Field(default=16384, ge=1)
    """GIF: extension sub-blocks before the first image."""

    tiff_max_tile_pixels: int = Field(default=4 * 1024 * 1024, ge=1)
    """TIFF: a tile larger than the image may have at most this many pixels."""

    bmp_max_rle_pixels: int = Field(default=4_000_000, ge=1)
    """BMP: pixels of an RLE-compressed BMP (Pillow decodes RLE in Python)."""

    ppm_max_header_bytes: int = Field(default=4096, ge=16)
    """PPM (when accepted): bytes of the text header."""

    def image_limits(self) -> ImageLimits:
        """The decode path's bounds (:class:`ImageLimits` has no defaults of its own)."""
        return ImageLimits(
            max_bytes=self.max_request_bytes,
            max_pixels=self.max_image_pixels,
            formats=frozenset(f.upper() for f in self.formats),
            max_decode_bytes=self.max_decode_bytes,
            jpeg_max_scans=self.jpeg_max_scans,
            jpeg_max_scan_pixels=self.jpeg_max_scan_pixels,
            jpeg_max_markers=self.jpeg_max_markers,
            jpeg_max_header_bytes=self.jpeg_max_header_bytes,
            jpeg_max_fill_bytes=self.jpeg_max_fill_bytes,
            png_max_chunks_before_idat=self.png_max_chunks_before_idat,
            png_max_chunks=self.png_max_chunks,
            png_max_ancillary_bytes=self.png_max_ancillary_bytes,
            gif_max_blocks_before_image=self.gif_max_blocks_before_image,
            tiff_max_tile_pixels=self.tiff_max_tile_pixels,
            bmp_max_rle_pixels=self.bmp_max_rle_pixels,
            ppm_max_header_bytes=self.ppm_max_header_bytes,
        )

    def grpc_max_message_bytes(self) -> int:
        """The gRPC message limit for Ray's proxy: the image limit plus room for the other
        request fields, so an oversized image is refused by the proxy before it is copied."""
        return self.max_request_bytes + GRPC_MESSAGE_OVERHEAD


#: Bytes a SegmentRequest may hold besides its image (model name, outputs, options).
GRPC_MESSAGE_OVERHEAD = 64 * 1024
#: The environment variable Ray Serve 2.60 reads (when its proxy starts) for the largest
#: gRPC message its proxy accepts; it must be set where the Ray node starts.
RAY_GRPC_MESSAGE_SIZE_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"


def ray_grpc_environment(limits: LimitsConfig) -> dict[str, str]:
    """Environment for a Ray node whose Serve proxy should refuse oversized gRPC messages."""
    return {RAY_GRPC_MESSAGE_SIZE_ENV: str(limits.grpc_max_message_bytes())}
