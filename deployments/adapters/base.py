"""The adapter interface: the only layer that imports a model framework.

An adapter loads one model (from a hub id, a directory, a config + checkpoint),
says what input it wants (:class:`InputSpec`), and turns a batch of uint8 RGB
images into label maps at the sizes asked for. It never sees HTTP, gRPC or Ray.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import numpy as np

from deployments.pipeline.errors import ModelLoadError
from deployments.pipeline.imaging import InputSpec

if TYPE_CHECKING:
    from deployments.config import ModelConfig

logger = logging.getLogger("segserve.adapters")

Weights = Literal["pretrained", "random"]
T = TypeVar("T")


def with_weights_policy(
    config: ModelConfig, load: Callable[[], T]
) -> tuple[T | None, Weights, str | None]:
    """Run ``load`` (the pretrained weights) under ``config.weights``: (result, weights, note).

    ``pretrained`` raises load's ModelLoadError; ``random`` never calls it; ``auto``
    falls back to random weights with a warning. A None result means "build random".
    """
    if config.weights == "random":
        return None, "random", "configured with weights: random"
    try:
        return load(), "pretrained", None
    except ModelLoadError as e:
        if config.weights == "pretrained":
            raise
        note = f"pretrained weights unavailable ({e}); running on random weights"
        logger.warning("model %r: %s", config.name, note)
        return None, "random", note


@dataclass(frozen=True)
class DevicePlan:
    """Where a replica runs its model, decided from what Ray gave it."""

    kind: Literal["cpu", "cuda"]
    cpu_threads: int
    #: Why the replica is on CPU although a GPU was asked for, if it is.
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "cpu_threads": self.cpu_threads,
            "fallback_reason": self.fallback_reason,
        }


def plan_device(
    gpus_assigned: float,
    cpus_assigned: float,
    cpu_threads: int | None,
    cuda_available: Callable[[], bool] | None = None,
) -> DevicePlan:
    """CUDA when the replica was given a GPU and its framework sees one, else CPU.

    CPU threads match the CPUs Ray assigned (rounded up) unless configured, so
    replicas sharing a node do not oversubscribe its cores.
    """
    threads = cpu_threads or max(1, math.ceil(cpus_assigned))
    if gpus_assigned > 0:
        if cuda_available is not None and cuda_available():
            return DevicePlan(kind="cuda", cpu_threads=threads)
        return DevicePlan(
            kind="cpu",
            cpu_threads=threads,
            fallback_reason=f"{gpus_assigned:g} GPU assigned but CUDA is not available here",
        )
    return DevicePlan(kind="cpu", cpu_threads=threads)


class SegmentationAdapter(abc.ABC):
    """One framework's model behind the one interface the model server uses."""

    framework: ClassVar[str]

    #: What the gateway must hand over.
    input_spec: InputSpec
    #: Class names, index = class id.
    labels: list[str]
    #: "pretrained" or "random": shown in every response.
    weights: Weights
    #: Why the model runs on random weights, when it does.
    weights_note: str | None = None

    @classmethod
    @abc.abstractmethod
    def cuda_available(cls) -> bool:
        """Whether this framework can use a GPU in this process (imports the framework)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, config: ModelConfig, device: DevicePlan) -> SegmentationAdapter:
        """Build the model; raise ModelLoadError with an actionable message if it cannot."""

    def predict_batch(
        self, images: Sequence[np.ndarray], output_sizes: Sequence[tuple[int, int]]
    ) -> list[np.ndarray]:
        """Label maps (uint8, or uint16 past 256 classes) at each (width, height) asked for.

        ``images`` are HxWx3 uint8 at ``input_spec`` sizes; each output size keeps
        the arg-max resolution bounded (the caller never asks for a huge one).
        Images of one shape run as one forward pass; a mixed batch runs one pass
        per shape, so every result equals what the image gets alone (padding to
        a common size would change what convolutions and attention see).
        """
        if len(images) != len(output_sizes):
            raise ValueError("one output size per image")
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(index)
        results: dict[int, np.ndarray] = {}
        for indices in groups.values():
            labels = self.predict_same_size(
                [images[i] for i in indices], [output_sizes[i] for i in indices]
            )
            results.update(zip(indices, labels, strict=True))
        return [results[i] for i in range(len(images))]

    @abc.abstractmethod
    def predict_same_size(
        self, images: Sequence[np.ndarray], output_sizes: Sequence[tuple[int, int]]
    ) -> list[np.ndarray]:
        """:meth:`predict_batch` for images that all have one shape: one forward pass."""

    def warm_up(self) -> Any:
        """One batch of one zero image at the model's input size (the cold start)."""
        width, height = self.input_spec.target_size(512, 512)
        return self.predict_batch([np.zeros((height, width, 3), np.uint8)], [(width, height)])

    def describe(self) -> dict[str, Any]:
        """Facts for ``/v1/models``."""
        return {
            "framework": self.framework,
            "weights": self.weights,
            "weights_note": self.weights_note,
            "num_labels": len(self.labels),
            "input_spec": self.input_spec.to_dict(),
        }


def check_weights(
    model_shapes: Mapping[str, tuple[int, ...]],
    checkpoint_shapes: Mapping[str, tuple[int, ...]],
    where: str,
) -> None:
    """Raise ModelLoadError naming the first missing, unexpected or mis-shaped weight.

    Frameworks' own loaders skip such weights with a warning (or not at all),
    which would serve a half-random model without telling anyone.
    """
    missing = sorted(set(model_shapes) - set(checkpoint_shapes))
    unexpected = sorted(set(checkpoint_shapes) - set(model_shapes))
    mismatched = [
        f"{key}: checkpoint {checkpoint_shapes[key]} vs model {model_shapes[key]}"
        for key in sorted(set(model_shapes) & set(checkpoint_shapes))
        if tuple(checkpoint_shapes[key]) != tuple(model_shapes[key])
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})")
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelLoadError(f"checkpoint {where} does not match the config: {'; '.join(parts)}")


OFFLINE_ENV = "SEGSERVE_OFFLINE"


def host_reachable(url: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    """Whether ``url``'s host accepts a TCP connection: seconds, not minutes of retries.

    ``SEGSERVE_OFFLINE=1`` says no without trying (air-gapped clusters, tests).
    """
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes", "on"):
        return False, f"{OFFLINE_ENV} is set"

    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, ""
    except OSError as e:
        return False, f"cannot reach {host}:{port} ({e})"


def adapter_class(framework: str) -> type[SegmentationAdapter]:
    """The adapter for a framework name; imported lazily so a replica loads only its own."""
    if framework == "hf_segformer":
        from deployments.adapters.hf_segformer import HFSegformerAdapter

        return HFSegformerAdapter
    if framework == "mmseg":
        from deployments.adapters.mmseg import MMSegAdapter

        return MMSegAdapter
    if framework == "paddleseg":
        from deployments.adapters.paddleseg import PaddleSegAdapter

        return PaddleSegAdapter
    raise ValueError(f"unknown framework {framework!r}")
