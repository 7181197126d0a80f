"""The model server's Ray-free core: one adapter, batches in, predictions out.

:class:`ModelCore` owns the adapter and everything a replica does per batch
(dropping requests whose deadline has passed, timing, statistics). The Ray
deployment in ``model_server.py`` and :class:`LocalEndpoint` (the same core without
Ray, for benchmarks, GPU checks and in-process tests) both batch it with
:class:`~deployments.batching.Batcher`, so both batch alike.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from deployments.adapters.base import SegmentationAdapter
from deployments.adapters.device import DevicePlan
from deployments.adapters.registry import adapter_class
from deployments.batching import Batcher
from deployments.config import ModelConfig
from deployments.contract import LatencySample, ModelCard, Prediction, PredictRequest
from deployments.pipeline.errors import DeadlineExceeded, SegServeError
from deployments.pipeline.process import peak_rss_mb, retain_freed_memory, started_retained


class ModelCore:
    """One model replica's work, without Ray.

    ``clock`` is the replica's own monotonic clock: a request's relative budget
    becomes a deadline on it when the request arrives (:meth:`PredictRequest.receive`).
    """

    def __init__(
        self,
        config: ModelConfig,
        device: DevicePlan,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        started = time.perf_counter()
        self.config = config
        self.device = device
        self.clock = clock
        #: Whether large tensors reuse freed heap memory (``retain_freed_memory``; glibc).
        self.heap_retained = config.retain_freed_memory and retain_freed_memory()
        self.adapter: SegmentationAdapter = adapter_class(config.framework).load(config, device)
        self.load_s = time.perf_counter() - started
        self._lock = threading.Lock()
        self.stats: dict[str, float] = {
            "requests": 0,
            "batches": 0,
            "expired": 0,
            "largest_batch": 0,
            "largest_input_pixels": 0,
            "busy_s": 0.0,
            "cpu_s": 0.0,
        }
        self.warmup = self._timed_warmup()

    def _timed_warmup(self) -> tuple[LatencySample, ...]:
        """The replica's one warm-up: a cold-start batch and a full one (untimed: first-call
        costs such as allocation, cuDNN autotuning or compilation), then batches of 1, 2, ...
        images at the model's input size, timed: the latency seed."""
        import numpy as np

        width, height = self.adapter.input_spec.target_size(512, 512)
        batching = self.config.batching
        # The most images of this size one batch holds (by count and by pixels).
        largest = max(
            1, min(batching.max_batch_size, batching.max_batch_pixels // (width * height))
        )
        if self.config.warmup_batches:
            self.adapter.warm_up()
            # And one batch as large as the replica forms, untimed: with retain_freed_memory
            # its tensors leave the heap mapped for every batch after it (none of them then
            # pays the kernel for fresh pages), the timed ones below included.
            if largest > 1:
                blank = [np.zeros((height, width, 3), np.uint8)] * largest
                self.adapter.predict_batch(blank, [(width, height)] * largest)
        samples = []
        for run in range(self.config.warmup_batches):
            count = min(run + 1, largest)
            images = [np.zeros((height, width, 3), np.uint8)] * count
            began = time.perf_counter()
            self.adapter.predict_batch(images, [(width, height)] * count)
            ms = (time.perf_counter() - began) * 1000
            samples.append(LatencySample(count * width * height, ms))
        return tuple(samples)

    def card(self) -> ModelCard:
        from deployments.adapters.labels import DATASETS
        from deployments.pipeline.palette import DATASET_PALETTES

        labels = list(self.adapter.labels)
        # The checkpoint's own palette (mmseg carries one), else that of the standard
        # dataset whose classes these are; neither: None (a generated palette).
        palette = getattr(self.adapter, "palette", None) or next(
            (DATASET_PALETTES[d] for d, names in DATASETS.items() if names == labels), None
        )
        return ModelCard(
            name=self.config.name,
            framework=self.adapter.framework,
            weights=self.adapter.weights,
            weights_note=self.adapter.weights_note,
            labels=labels,
            input_spec=self.adapter.input_spec,
            warmup=self.warmup,
            palette=(
                tuple((int(c[0]), int(c[1]), int(c[2])) for c in palette) if palette else None
            ),
        )

    def batch_cost(self, request: PredictRequest) -> int:
        """A request's share of a batch in slots of ``max_batch_size``.

        Each request costs at least one slot and more when its pixels would
        exceed its share of ``max_batch_pixels``, so a batch whose costs sum to
        at most ``max_batch_size`` respects both the count and the pixel budget.
        """
        batching = self.config.batching
        slots = math.ceil(request.pixels * batching.max_batch_size / batching.max_batch_pixels)
        return min(batching.max_batch_size, max(1, slots))

    def run_batch(self, requests: Sequence[PredictRequest]) -> list[Prediction | SegServeError]:
        """Run one batch; expired requests get DeadlineExceeded and use no model time."""
        for request in requests:
            request.receive(self.clock)
        batch_start = self.clock()
        results: list[Prediction | SegServeError] = []
        live = [r for r in requests if r.deadline is None or r.deadline > batch_start]
        live_ids = {id(r) for r in live}
        inference_ms = 0.0
        labels = []
        busy_s = cpu_s = 0.0
        if live:
            began, cpu_began = time.perf_counter(), time.process_time()
            labels = self.adapter.predict_batch(
                [r.image for r in live], [r.label_size for r in live]
            )
            busy_s = time.perf_counter() - began
            cpu_s = time.process_time() - cpu_began
            inference_ms = busy_s * 1000
        outputs = iter(labels)
        batch_id = uuid.uuid4().hex
        batch_pixels = sum(r.pixels for r in live)
        for request in requests:
            if id(request) in live_ids:
                results.append(
                    Prediction(
                        labels=next(outputs),
                        queue_ms=(batch_start - (request.received_at or batch_start)) * 1000,
                        inference_ms=inference_ms,
                        batch_size=len(live),
                        weights=self.adapter.weights,
                        weights_note=self.adapter.weights_note,
                        batch_pixels=batch_pixels,
                        batch_id=batch_id,
                    )
                )
            else:
                late_ms = (batch_start - (request.deadline or batch_start)) * 1000
                results.append(
                    DeadlineExceeded(
                        f"deadline passed {late_ms:.0f} ms before the model could run it; not run"
                    )
                )
        with self._lock:
            self.stats["requests"] += len(live)
            self.stats["expired"] += len(requests) - len(live)
            self.stats["batches"] += 1 if live else 0
            self.stats["busy_s"] += busy_s
            self.stats["cpu_s"] += cpu_s
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(live))
            self.stats["largest_input_pixels"] = max(
                [self.stats["largest_input_pixels"], *(r.pixels for r in requests)]
            )
        return results

    def describe(self) -> dict[str, Any]:
        info = self.adapter.describe()
        info.update(
            {
                "name": self.config.name,
                "source": self.config.source,
                "weights_policy": self.config.weights,
                "quality": self.config.quality,
                "labels": list(self.adapter.labels),
                "batching": self.config.batching.model_dump(),
                "label_max_pixels": self.config.label_max_pixels,
                "load_s": round(self.load_s, 2),
                "warmup": [{"pixels": s.pixels, "ms": round(s.ms, 1)} for s in self.warmup],
                "stats": dict(self.stats),
                # Process CPU seconds per second of running batches: about the
                # threads the model really uses (above its cpu_threads: oversubscribed).
                "cpu_cores_used": (
                    round(self.stats["cpu_s"] / self.stats["busy_s"], 2)
                    if self.stats["busy_s"]
                    else None
                ),
                "frameworks_loaded": sorted(
                    name for name in ("paddle", "torch") if name in sys.modules
                ),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                # retain_freed_memory: applied in this process (mallopt), and whether it
                # started with the whole policy (one arena only takes effect at start).
                "heap": {"retained": self.heap_retained, "started_retained": started_retained()},
            }
        )
        return info


class LocalEndpoint:
    """A :class:`ModelEndpoint` that runs the core in-process, batched as a replica batches.

    For benchmarks, GPU checks and machines without Ray: requests go through a
    :class:`~deployments.batching.Batcher` with the model's batching settings and
    ``batch_cost`` (as the model server's replicas batch), and each batch
    runs ``ModelCore.run_batch`` (deadline drops included) in a worker thread.
    """

    def __init__(
        self,
        core: ModelCore,
        run_batch: Callable[[list[PredictRequest]], Sequence[Prediction | SegServeError]]
        | None = None,
    ) -> None:
        """``run_batch`` (default ``core.run_batch``) runs each batch; the model server
        passes one that calls it and records its metrics."""
        self.core = core
        self._card = core.card()
        batching = core.config.batching
        self.batcher: Batcher[PredictRequest, Prediction | SegServeError] = Batcher(
            run_batch or core.run_batch,
            max_batch_size=batching.max_batch_size,
            batch_wait_timeout_s=batching.batch_wait_timeout_s,
            max_concurrent_batches=batching.max_concurrent_batches,
            cost=core.batch_cost,
            clock=core.clock,
        )

    async def card(self) -> ModelCard:
        return self._card

    async def describe(self) -> dict[str, Any]:
        return self.core.describe()

    async def ready(self) -> bool:
        return True

    async def predict(self, request: PredictRequest) -> Prediction:
        # As in the replica: the relative budget becomes a deadline on arrival.
        request.receive(self.core.clock)
        result = await self.batcher.submit(request)
        if isinstance(result, SegServeError):
            raise result
        return result
