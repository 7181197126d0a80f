"""The model-server deployment: one class, one deployment per configured model.

A replica loads its model once (on CUDA when Ray gave it a GPU), then batches
requests with :class:`~deployments.batching.Batcher` (the same one the Ray-free
path uses). Batches are bounded by request count and by input pixels: each
request's cost (``ModelCore.batch_cost``) is counted against ``max_batch_size``.
The model runs in a worker thread so the replica keeps accepting requests while
a batch computes, and the next batch is formed only when a run slot is free, so
requests that arrive during a batch run together in the next one.

Not Ray Serve's ``@serve.batch``: Ray 2.60 forms the next batch while the slots
are busy (its ``_process_batches`` loop closes a batch ``batch_wait_timeout_s``
after taking its first request and only then waits for a slot), so under load
the batches stay at one or two requests whatever ``max_batch_size`` says
(measured: twelve requests reaching a busy replica at once ran as batches of
4, 1, 3, 1, 1, 2, 2).
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import serve
from ray.serve import metrics

from deployments.adapters.device import plan_device
from deployments.adapters.registry import cuda_available
from deployments.affinity import pin_process
from deployments.config import ModelConfig
from deployments.contract import ModelCard, Prediction, PredictRequest
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.errors import SegServeError

logger = logging.getLogger("ray.serve")


@serve.deployment
class ModelServer:
    def __init__(self, config: ModelConfig) -> None:
        resources = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
        pinning = pin_process(config.cpu_affinity, f"model {config.name!r}")  # before torch threads
        device = plan_device(
            gpus_assigned=float(resources.get("GPU", 0.0)),
            cpus_assigned=float(resources.get("CPU", config.num_cpus or 1.0)),
            cpu_threads=config.cpu_threads,
            cuda_available=lambda: cuda_available(config.framework),
            cpu_affinity=pinning.cpus,
            cpu_note=pinning.note,
        )
        if device.fallback_reason:
            logger.warning("model %r: %s; running on CPU", config.name, device.fallback_reason)
        self.core = ModelCore(config, device)
        tags = {"model": config.name}
        # Prometheus, through Ray's metrics agent (segserve_* on each node's metrics port).
        self._ran = metrics.Counter(
            "segserve_model_requests", "Requests a model replica ran.", tag_keys=("model",)
        )
        self._expired = metrics.Counter(
            "segserve_model_expired",
            "Requests dropped before running because their deadline had passed.",
            tag_keys=("model",),
        )
        self._batch_ms = metrics.Histogram(
            "segserve_model_batch_ms",
            "Time of one batch in the model (ms).",
            boundaries=[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
            tag_keys=("model",),
        )
        for metric in (self._ran, self._expired, self._batch_ms):
            metric.set_default_tags(dict(tags))  # Ray adds its own tags to the dict given

        def run_batch(requests: list[PredictRequest]) -> list[Prediction | SegServeError]:
            # In the batcher's worker thread; Ray's metrics record from any thread.
            results = self.core.run_batch(requests)
            ran = [r for r in results if isinstance(r, Prediction)]
            if ran:
                self._ran.inc(len(ran))
                self._batch_ms.observe(ran[0].inference_ms)
            if len(ran) < len(results):
                self._expired.inc(len(results) - len(ran))
            return results

        # Batched as the Ray-free endpoint batches: the same Batcher, the same rules.
        self._local = LocalEndpoint(self.core, run_batch)

    async def card(self) -> ModelCard:
        return self.core.card()

    async def predict(self, request: PredictRequest) -> Prediction:
        # The budget becomes a deadline on this node's clock on arrival (LocalEndpoint).
        return await self._local.predict(request)

    async def ready(self) -> bool:
        return True

    async def describe(self) -> dict[str, Any]:
        info = self.core.describe()
        info["replica"] = serve.get_replica_context().replica_id.unique_id
        info["node_id"] = ray.get_runtime_context().get_node_id()
        return info
