"""The gateway's policies: API keys, status refresh, routing, outputs, the IMAGE contract."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from deployments.config.base import ConfigError, StrictModel

if TYPE_CHECKING:
    from deployments.pipeline.image_contract import SegmentRules


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
    """Predicted times add this many standard deviations of the fits' residuals: the
    gateway's own decode and encode always, a model's round trip until its calibration
    has ``calibration_min_samples`` requests (then ``margin_quantile`` applies)."""

    margin_quantile: float = Field(default=0.95, gt=0, le=1)
    """A model's predicted round trip (queue ahead, its batch, transport) is scaled by this
    quantile of actual / predicted over its last ``calibration_window`` requests, so a
    budget the router says fits is met about this often, whatever made earlier predictions
    wrong (a busy machine, other gateways' work). Higher: fewer misses on the accurate
    model but fewer upgrades, so more load (and queueing) on the fast one; in replays of
    the isolated setting 0.9-0.98 gave the same attainment within noise."""

    calibration_window: int = Field(default=200, ge=1, le=100_000)
    """Requests per model whose prediction errors calibrate the margin (most recent)."""

    calibration_min_samples: int = Field(default=10, ge=2, le=100_000)
    """Answered requests a model needs before its calibration replaces ``margin_sigmas``
    (an idle model with none lately is tried at its mean prediction, so it can show its
    speed)."""

    calibration_max_age_s: float = Field(default=300.0, gt=0, le=86_400)
    """Requests older than this no longer calibrate (a model not chosen for a while is
    recalibrated from new requests rather than judged by an old bad spell)."""

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


class AdmissionConfig(StrictModel):
    """Admission control: a request for a model whose replicas are full is answered 503
    ``overloaded`` (gRPC RESOURCE_EXHAUSTED) by the gateway at once, before its body is
    read when the model is known from the URL or message (``model=<name>``, or ``auto``
    without budget routing), else right after routing and before decoding.

    A model's capacity is what its replicas hold: ``max_ongoing_requests`` x replicas (the
    configured ``num_replicas``, or with autoscaling the running count the gateway last
    saw) + ``max_queued_requests`` (-1: unbounded, never refused here). In flight are the
    requests this gateway admitted to the model and has not answered yet (body read,
    decode, model and encode included). Each gateway replica counts only its own traffic,
    so the running-slots part is shared (below); the queued part is not, since Ray queues
    ``max_queued_requests`` at each caller, i.e. at each gateway."""

    enabled: bool = True
    """Refuse at the gateway. Off: every request is decoded and sent, and a full model is
    refused by Ray's handle (``BackPressureError``) after the upload and decode."""

    capacity_factor: float = Field(default=1.0, gt=0, le=100)
    """Multiplies each model's capacity: below 1 keeps headroom for other gateways or
    clients of the deployment; above 1 lets Ray's own queue limit answer the excess."""

    share_among_gateways: bool = True
    """Each gateway replica admits ``max_ongoing_requests`` x replicas / gateway replicas
    (rounded up; the running count, or the configured one), plus the whole
    ``max_queued_requests``. Off: each gateway admits all the replicas' slots, so with
    several busy gateways more is admitted than the replicas hold and Ray's back-pressure
    answers the rest (slower)."""


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
