"""Typed configuration: the ``args`` of the application in serve_config.yaml.

Every model is strict (``extra="forbid"``): a misspelt key is an error that
names the key's full path, e.g. ``models.0.batching.max_batch_sise``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deployments.pipeline.imaging import DEFAULT_FORMATS, ImageLimits

if TYPE_CHECKING:
    from deployments.pipeline.image_contract import SegmentRules

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class BatchingConfig(StrictModel):
    max_batch_size: int = Field(default=8, ge=1, le=256)
    """Most requests in one batch."""

    max_batch_pixels: int = Field(default=8 * 512 * 512, ge=1)
    """Most input pixels (sum of width x height as the model sees them) in one batch."""

    batch_wait_timeout_s: float = Field(default=0.01, ge=0, le=10)
    """How long a batch waits for more requests after its first one arrives."""

    max_concurrent_batches: int = Field(default=1, ge=1, le=16)
    """Batches one replica runs at once (more than 1 only helps on a GPU)."""


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling for one deployment (the fields of Ray Serve's
    ``AutoscalingConfig`` that segserve exposes). Replaces ``num_replicas``: Serve keeps the
    replica count between ``min_replicas`` and ``max_replicas`` so each replica has about
    ``target_ongoing_requests``.
    Replicas that do not fit on the cluster's nodes stay pending until a node with room joins
    (with the Ray autoscaler or KubeRay, such a node is started for them)."""

    min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas, kept even without traffic (0 scales to zero: the next request waits
    for a replica to load)."""

    max_replicas: int = Field(default=1, ge=1)
    """Most replicas."""

    initial_replicas: int | None = Field(default=None, ge=0)
    """Replicas started at deploy time; by default ``min_replicas``."""

    target_ongoing_requests: float = Field(default=2.0, gt=0)
    """Requests (running + queued in the replica) each replica should have on average. For a
    batching model, about its batch size: lower scales out sooner, higher packs batches fuller."""

    upscale_delay_s: float = Field(default=30.0, ge=0)
    """How long the load must call for more replicas before they are added."""

    downscale_delay_s: float = Field(default=600.0, ge=0)
    """How long the load must call for fewer replicas before some are removed."""

    look_back_period_s: float = Field(default=30.0, gt=0)
    """Window over which request counts are averaged."""

    metrics_interval_s: float = Field(default=10.0, gt=0)
    """How often replicas and handles report request counts to the controller. Ray 2.60 marks
    it deprecated (in favour of ``RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S``) but still
    honours it; a scaling decision cannot come faster than this."""

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) is outside [min_replicas, max_replicas] "
                f"= [{self.min_replicas}, {self.max_replicas}]"
            )
        return self

    def ray_options(self) -> dict[str, Any]:
        """The ``autoscaling_config`` dict for ``Deployment.options``."""
        return self.model_dump(exclude_none=True)


def _replicas_or_autoscaling(num_replicas: int, autoscaling: AutoscalingConfig | None) -> None:
    if autoscaling is not None and num_replicas > 1:
        raise ValueError(
            f"autoscaling_config: cannot be combined with num_replicas: {num_replicas}; "
            "set min_replicas/max_replicas in autoscaling_config and drop num_replicas"
        )


def replica_options(num_replicas: int, autoscaling: AutoscalingConfig | None) -> dict[str, Any]:
    """``num_replicas`` or ``autoscaling_config`` for ``Deployment.options`` (never both)."""
    if autoscaling is None:
        return {"num_replicas": num_replicas}
    return {"autoscaling_config": autoscaling.ray_options()}


class ModelConfig(StrictModel):
    name: str
    """The model's name in the API (``model=<name>``): letters, digits, ``.``, ``_``, ``-``."""

    framework: Literal["hf_segformer", "mmseg", "paddleseg"]
    """Which adapter serves it."""

    source: str
    """hf_segformer: a HuggingFace hub id (``nvidia/segformer-b0-finetuned-ade-512-512``) or
    a local directory. mmseg: a config shipped with mmsegmentation (by name, e.g.
    ``segformer_mit-b0_8xb2-160k_ade20k-512x512``) or a config file path. paddleseg: a
    PaddleSeg config file (``.yml``), a PaddleSeg model class (``PPLiteSeg``) whose arguments
    are ``config_options.model``, or an exported inference model (``paddle.jit.save``
    output: a directory or path prefix)."""

    checkpoint: str | None = None
    """mmseg: checkpoint path or URL; by default the model zoo's URL for a shipped config.
    paddleseg: a ``.pdparams`` path or URL."""

    config_options: dict[str, Any] = Field(default_factory=dict)
    """mmseg: overrides merged into the config (mmengine ``merge_from_dict`` keys).
    paddleseg: a PaddleSeg config dict merged over the source's (``model``,
    ``val_dataset.transforms``, ``test_config``)."""

    weights: Literal["pretrained", "random", "auto"] = "auto"
    """``pretrained``: load the source's weights or fail; ``random``: build the architecture
    with random weights; ``auto``: pretrained when reachable, else random with a warning."""

    architecture: str | None = None
    """Variant to build when weights are random and the source has no config (``b0``..``b5``);
    by default read from the source name."""

    labels: Literal["ade20k", "cityscapes"] | None = None
    """Label set for random weights when the source has no config; by default from the name."""

    seed: int = 0
    """Seed for random weights, so every replica of a random model answers alike."""

    quality: float | None = Field(default=None, ge=0, le=100)
    """Accuracy figure used to rank models for ``model=auto`` with a budget (e.g. ADE20K
    mIoU); a model without one, or whose labels differ from the default model's, is never
    picked by budget."""

    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """``auto``: bf16 (or fp16) autocast on CUDA, fp32 on CPU."""

    compile: bool = False
    """``torch.compile`` the model and warm it up at replica start (slow start, faster batches)."""

    cpu_threads: int | None = Field(default=None, ge=1, le=256)
    """Torch threads on CPU; by default the CPUs Ray gave the replica (rounded up)."""

    label_max_pixels: int = Field(default=512 * 512, ge=1024)
    """Resolution bound for the arg-max: logits are upsampled to the original size only up
    to this many pixels; larger originals get a nearest-neighbour upscale of the label map."""

    batching: BatchingConfig = BatchingConfig()
    """Request batching in the replica."""

    warmup_batches: int = Field(default=2, ge=0, le=16)
    """Batches (of 1, 2, ... images) timed at replica start to seed the latency model."""

    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs reserved per replica in Ray."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per replica in Ray (fractional shares allowed)."""

    max_ongoing_requests: int = Field(default=32, ge=1)
    """Requests a replica accepts at once (what it can batch from)."""

    max_queued_requests: int = Field(default=256, ge=-1)
    """Requests waiting for a replica before new ones get 503; -1 is unbounded."""

    autoscaling_config: AutoscalingConfig | None = None
    """Scale replicas with load between min_replicas and max_replicas (instead of
    ``num_replicas``)."""

    @model_validator(mode="after")
    def _scaling(self) -> ModelConfig:
        _replicas_or_autoscaling(self.num_replicas, self.autoscaling_config)
        return self

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if value == "auto" or not _NAME.match(value):
            raise ValueError(
                "model names use letters, digits, '.', '_' and '-' (at most 63) and are not 'auto'"
            )
        return value


def valid_model_name(name: str) -> bool:
    """Whether ``name`` could be a configured model's name (checked before any lookup)."""
    return bool(_NAME.match(name)) and name != "auto"


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

    decode_queue: int = Field(default=8, ge=0, le=4096)
    """Decodes waiting for a worker; the next one gets 503 ``overloaded`` at once."""

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


class AuthConfig(StrictModel):
    """API keys. With none configured (the default) every route is open."""

    api_keys: list[str] = Field(default_factory=list, repr=False)
    """Accepted keys (``Authorization: Bearer <key>`` or ``X-API-Key`` over HTTP, the
    ``authorization`` metadata over gRPC). Prefer ``api_keys_file`` or ``api_keys_env``:
    keys written here end up in the Serve config Ray keeps."""

    api_keys_file: str | None = None
    """A file with one key per line (blank lines and ``#`` comments ignored), read when the
    gateway starts, e.g. a mounted Kubernetes secret."""

    api_keys_env: str | None = None
    """An environment variable holding keys separated by commas or whitespace, read when
    the gateway starts."""

    @field_validator("api_keys")
    @classmethod
    def _non_empty(cls, keys: list[str]) -> list[str]:
        if any(len(k.strip()) < 8 for k in keys):
            raise ValueError("API keys must have at least 8 characters")
        return [k.strip() for k in keys]

    @property
    def configured(self) -> bool:
        return bool(self.api_keys or self.api_keys_file or self.api_keys_env)

    def load_keys(self, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """Every accepted key from the three sources; raises ConfigError for a configured
        source that is missing or holds none."""
        environ = os.environ if environ is None else environ
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            try:
                text = Path(self.api_keys_file).read_text()
            except OSError as e:
                raise ConfigError(f"gateway.auth.api_keys_file cannot be read: {e}") from e
            found = [
                line.strip() for line in text.splitlines() if line.strip()
                and not line.lstrip().startswith("#")
            ]  # fmt: skip
            if not found:
                raise ConfigError("gateway.auth.api_keys_file holds no keys")
            keys += found
        if self.api_keys_env is not None:
            found = re.split(r"[\s,]+", environ.get(self.api_keys_env, "").strip())
            found = [k for k in found if k]
            if not found:
                raise ConfigError(
                    f"gateway.auth.api_keys_env: ${self.api_keys_env} is unset or empty"
                )
            keys += found
        if any(len(k) < 8 for k in keys):
            raise ConfigError("API keys must have at least 8 characters")
        return tuple(dict.fromkeys(keys))


class StatusConfig(StrictModel):
    """How /readyz and /v1/models learn the models' state: a background refresh, so a
    probe never waits in a model's request queue."""

    refresh_s: float = Field(default=5.0, gt=0, le=3600)
    """How often the gateway refreshes each model's readiness and description."""

    probe_timeout_s: float = Field(default=5.0, gt=0, le=600)
    """How long one refresh waits for a model; one that does not answer keeps its last
    description and counts as not ready."""

    expose_load_errors: bool = False
    """Show the full weights load error (``weights_note``: paths, host names) in
    /v1/models. Off: responses and listings carry only the stable ``weights_reason``
    code and the error goes to the logs."""


class RoutingConfig(StrictModel):
    """How ``model=auto`` with a ``budget_ms`` picks a model."""

    margin_sigmas: float = Field(default=3.0, ge=0, le=10)
    """Predicted times add this many standard deviations of the fit's residuals."""

    half_life: float = Field(default=50.0, gt=0, le=100_000)
    """Half-life of the online latency fits, in observed batches."""

    shared_compute: bool = False
    """The models share their compute (all replicas on one machine's CPU, or one GPU):
    work in flight to any model delays every model. False when each model has its own
    GPUs or nodes."""

    max_upgrade_utilization: float = Field(default=0.5, ge=0, le=100)
    """With shared_compute: when the models were busy more than this fraction of the last
    ``utilization_window_s``, a budget gets the fastest model that fits instead of the best
    (a slow model would make the requests behind it miss theirs)."""

    utilization_window_s: float = Field(default=10.0, gt=0, le=3600)
    """Window over which the models' busy fraction is measured (shared_compute)."""

    card_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """How long ``model=auto`` waits for a non-default model's card: a model still loading
    is left out of the choice rather than holding the request."""


class OutputsConfig(StrictModel):
    """Defaults of the drawn outputs (``outputs=contours,rle,overlay``); a request's own
    options (``min_area``, ``simplify``, ``max_classes``, ``alpha``, ``overlay_format``,
    ``legend``) override them."""

    overlay_max_pixels: int = Field(default=2_000_000, ge=1024, le=100_000_000)
    """The overlay is drawn at the original size up to this many pixels, else scaled down
    (aspect kept); the photo is decoded only as large as that (JPEG draft mode)."""

    overlay_format: Literal["jpeg", "png"] = "jpeg"
    """Overlay encoding: JPEG is several times faster to encode for a photo than PNG."""

    overlay_alpha: float = Field(default=0.5, ge=0, le=1)
    """Weight of the class colour over the photo (0: the photo, 1: the colours only)."""

    overlay_legend: bool = False
    """Draw a legend of the classes present in the overlay's top-left corner."""

    overlay_jpeg_quality: int = Field(default=90, ge=1, le=100)
    """JPEG quality of the overlay."""

    contour_min_area: float = Field(default=0.0, ge=0, le=1)
    """Contours enclosing less than this fraction of the image are left out."""

    contour_simplify: float = Field(default=0.0, ge=0, le=10_000)
    """Douglas-Peucker tolerance of contours, in pixels of the original image (0: off)."""

    contour_max_classes: int | None = Field(default=None, ge=1)
    """Contours of at most this many classes (largest first); by default all."""


class ImageContractConfig(StrictModel):
    """The IMAGE preprocessor contract (``POST /preprocessor``): what the IMAGE
    orchestrator's segmentation preprocessor answers, with the existing one's rules."""

    name: str = "ca.mcgill.a11y.image.preprocessor.semanticSegmentation"
    """The name the response is filed under (a reverse-domain name)."""

    max_segments: int = Field(default=5, ge=1, le=1000)
    """Classes considered: this many with the most pixels."""

    min_contour_pixels: float = Field(default=2000, ge=0)
    """A contour is kept when it encloses at least this many pixels of the original image."""

    min_segment_fraction: float = Field(default=0.05, ge=0, le=1)
    """A class is kept when its kept contours cover at least this fraction of the image."""

    categories: list[str] = Field(default_factory=lambda: ["photo"])
    """Content-categoriser categories this preprocessor applies to: when the categoriser has
    answered false to all of them, the answer is 204."""

    budget_ms: float = Field(default=10_000, gt=0, le=600_000)
    """Budget of each request (``model=auto``: the best model predicted to answer within it);
    below the orchestrator's 15 s timeout."""

    max_body_bytes: int = Field(default=96 * 1024 * 1024, ge=1)
    """Largest request body (JSON with the base64 image and earlier preprocessors' results);
    the image itself is still bounded by ``limits``."""

    @model_validator(mode="after")
    def _valid_rules(self) -> ImageContractConfig:
        self.rules()  # the name pattern and bounds, checked at load time
        return self

    def rules(self) -> SegmentRules:
        """The :class:`~deployments.pipeline.image_contract.SegmentRules` of this config."""
        # Imported here: the contract pulls in OpenCV, which model replicas need not load.
        from deployments.pipeline.image_contract import SegmentRules

        return SegmentRules(
            name=self.name,
            max_segments=self.max_segments,
            min_contour_pixels=self.min_contour_pixels,
            min_segment_fraction=self.min_segment_fraction,
            categories=tuple(self.categories),
        )


class GatewayConfig(StrictModel):
    default_model: str | None = None
    """Model used for ``model=auto``; by default the first model listed."""

    limits: LimitsConfig = LimitsConfig()
    """Size limits for uploads."""

    png_compress_level: int = Field(default=1, ge=0, le=9)
    """zlib level of the label PNG (1 is fast and label maps compress well)."""

    routing: RoutingConfig = RoutingConfig()
    """Latency-budget routing (``model=auto&budget_ms=...``)."""

    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.5, ge=0)
    """CPUs reserved per gateway replica (decode, resize and encode run here)."""

    max_ongoing_requests: int = Field(default=64, ge=1)

    max_queued_requests: int = Field(default=128, ge=-1)
    """Requests waiting for a gateway replica before Ray's proxy answers 503 (gRPC
    RESOURCE_EXHAUSTED) itself; -1 is unbounded (not advised on a public endpoint: waiting
    requests hold their bodies in the proxy)."""

    autoscaling_config: AutoscalingConfig | None = None
    """Scale gateway replicas (CPU: decode, resize, encode) with load, on their own
    settings, instead of ``num_replicas``."""

    auth: AuthConfig = AuthConfig()
    """API keys (every route but /healthz needs one when any is configured)."""

    status: StatusConfig = StatusConfig()
    """Background refresh of model readiness and descriptions (/readyz, /v1/models)."""

    outputs: OutputsConfig = OutputsConfig()
    """Defaults of the contours, RLE and overlay outputs."""

    image: ImageContractConfig = ImageContractConfig()
    """The IMAGE preprocessor contract (``POST /preprocessor``)."""

    @model_validator(mode="after")
    def _scaling(self) -> GatewayConfig:
        _replicas_or_autoscaling(self.num_replicas, self.autoscaling_config)
        return self


class AppArgs(StrictModel):
    """The ``args`` of the segserve application in serve_config.yaml."""

    models: list[ModelConfig] = Field(min_length=1)
    gateway: GatewayConfig = GatewayConfig()

    @model_validator(mode="after")
    def _consistent(self) -> AppArgs:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        default = self.gateway.default_model
        if default is not None and default not in names:
            raise ValueError(
                f"gateway.default_model {default!r} is not a configured model ({', '.join(names)})"
            )
        return self

    @property
    def default_model(self) -> str:
        return self.gateway.default_model or self.models[0].name


def deployment_name(model: str) -> str:
    """The Ray Serve deployment that serves a model."""
    return f"model_{model}"


class ConfigError(ValueError):
    """A configuration file or dict that does not validate; the message lists key paths."""


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{path}: {item['msg']}")
    return "invalid segserve config:\n  " + "\n  ".join(lines)


def parse_args(args: dict[str, Any]) -> AppArgs:
    """Validate an application's ``args`` dict, with key paths in the error."""
    try:
        return AppArgs.model_validate(args)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def load_serve_config(path: str | Path, app_name: str | None = None) -> AppArgs:
    """Read serve_config.yaml and validate the segserve application's args."""
    document = yaml.safe_load(Path(path).read_text())
    apps = document.get("applications") or []
    for app in apps:
        if app_name is None or app.get("name") == app_name:
            return parse_args(app.get("args") or {})
    raise ConfigError(f"no application {app_name!r} in {path}")
