"""The adapter interface: the only layer that imports a model framework.

An adapter loads one model (from a hub id, a directory, a config + checkpoint),
says what input it wants (:class:`InputSpec`), and turns a batch of uint8 RGB
images into label maps at the sizes asked for. It never sees HTTP, gRPC or Ray.

This module is the interface only: it imports no framework and no adapter. The
registry (``registry.py``) maps framework names to adapter classes, the device
plan is in ``device.py``, and what loading weights needs in ``loading.py``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from deployments.pipeline.imaging import InputSpec

if TYPE_CHECKING:
    from deployments.adapters.device import DevicePlan
    from deployments.config import ModelConfig

Weights = Literal["pretrained", "random"]

#: The image size the warm-up asks the input spec about (it says what the model gets).
WARM_UP_IMAGE_SIZE = (512, 512)


class SegmentationAdapter(abc.ABC):
    """One framework's model behind the one interface the model server uses.

    Lifecycle: :meth:`load` builds the model and runs nothing through it;
    :meth:`warm_up` runs it once (the cold start, called once by the model
    server); then :meth:`predict_batch` per batch.
    """

    framework: ClassVar[str]

    #: The model's configuration, as the deployment gave it.
    config: ModelConfig
    #: Where the model runs.
    device: DevicePlan
    #: What the gateway must hand over.
    input_spec: InputSpec
    #: Class names, index = class id.
    labels: list[str]
    #: "pretrained" or "random": shown in every response.
    weights: Weights
    #: Why the model runs on random weights, when it does.
    weights_note: str | None = None
    #: The arithmetic the model runs in ("fp32", "float16", "bfloat16").
    precision: str = "fp32"

    @classmethod
    @abc.abstractmethod
    def cuda_available(cls) -> bool:
        """Whether this framework can use a GPU in this process (imports the framework)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, config: ModelConfig, device: DevicePlan) -> SegmentationAdapter:
        """Build the model; raise ModelLoadError with an actionable message if it cannot.

        Runs no image through the model: :meth:`warm_up` does, once, when asked.
        """

    def warm_up(self) -> None:
        """Run one blank image at the model's input size through the whole predict path.

        The first pass pays for lazy initialisation (allocators, kernel choice,
        compiled graphs); running it here keeps that cost off the first request
        and out of the timed batches that seed the latency model.
        """
        width, height = self.input_spec.target_size(*WARM_UP_IMAGE_SIZE)
        blank = np.zeros((height, width, 3), dtype=np.uint8)
        self.predict_batch([blank], [(width, height)])

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

    def describe(self) -> dict[str, Any]:
        """Facts for ``/v1/models``; adapters add their own with ``super().describe()``."""
        return {
            "framework": self.framework,
            "source": self.config.source,
            "weights": self.weights,
            "weights_note": self.weights_note,
            "num_labels": len(self.labels),
            "input_spec": self.input_spec.to_dict(),
            "device": self.device.to_dict(),
            "precision": self.precision,
        }
