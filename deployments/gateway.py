"""The ingress deployment: Ray Serve wiring of the protocol modules to the service.

Only what is Ray-specific lives here: model deployment handles seen as
:class:`ModelEndpoint`s (with Ray's errors translated to the service's), the
running replica counts the router divides queues by and admission control sizes
capacities with (the models' and this gateway deployment's), Prometheus counters, and
the registration of each protocol: HTTP routes through
``__serve_build_asgi_app__``, gRPC methods as base classes (Ray Serve's gRPC
proxy calls them by name). A new protocol is one module in ``protocols/`` plus
one line in :data:`HTTP_PROTOCOLS` and/or the class bases below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayTaskError
from ray.serve import metrics
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from deployments.affinity import pin_process
from deployments.config import GatewayConfig, ModelConfig, deployment_name
from deployments.contract import ModelCard, Prediction, PredictRequest
from deployments.pipeline.admission import overloaded_message
from deployments.pipeline.errors import NotReady, Overloaded, SegServeError
from deployments.pipeline.service import SegmentationService
from deployments.protocols import demo, http, image
from deployments.protocols.common import as_client_error
from deployments.protocols.grpc import SegServeGrpc
from deployments.protocols.oip import http as oip_http
from deployments.protocols.oip.grpc import OipGrpc
from deployments.protocols.wire import SegmentResult

_REPLICAS_REFRESH_S = 5.0
#: The HTTP protocols the gateway serves, each ``register(app, service)``.
HTTP_PROTOCOLS: tuple[http.Registration, ...] = (
    http.register,
    oip_http.register,
    image.register,
    demo.register,
)


def from_ray(error: BaseException, model: str | None = None) -> SegServeError:
    """Map an exception from a Ray call (to ``model``'s deployment) to the one hierarchy."""
    if isinstance(error, RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            return from_ray(cause, model)
    if isinstance(error, BackPressureError):  # admitted past what Ray queues (several gateways)
        message = "the model's queue is full; retry later"
        return Overloaded(message if model is None else overloaded_message(model))
    if isinstance(error, RayActorError | NodeDiedError | ObjectLostError):
        return NotReady("a model replica died while serving the request; retry")
    if isinstance(error, DeploymentUnavailableError | ReplicaUnavailableError):
        return NotReady("no model replica is available right now; retry")
    return as_client_error(error)


class RayModelEndpoint:
    """A model server deployment seen as a :class:`ModelEndpoint`."""

    def __init__(self, name: str, handle: DeploymentHandle[Any]) -> None:
        self.name = name
        self.handle = handle
        self._card: ModelCard | None = None

    async def card(self) -> ModelCard:
        if self._card is None:
            try:
                self._card = await self.handle.card.remote()
            except Exception as e:
                raise from_ray(e, self.name) from e
        return self._card

    async def predict(self, request: PredictRequest) -> Prediction:
        try:
            result: Prediction = await self.handle.predict.remote(request)
        except Exception as e:
            raise from_ray(e, self.name) from e
        return result

    async def describe(self) -> dict[str, Any]:
        try:
            info: dict[str, Any] = await self.handle.describe.remote()
        except Exception as e:
            raise from_ray(e) from e
        info["replicas"] = await asyncio.to_thread(_replica_counts, deployment_name(self.name))
        return info

    async def ready(self) -> bool:
        """Whether a replica is RUNNING (Serve marks it so once its model loaded and warmed
        up), from the controller: never a call that waits in the model's request queue."""
        states = await asyncio.to_thread(_replica_counts, deployment_name(self.name))
        if states:
            return states.get("RUNNING", 0) > 0
        try:  # no status (not in a Serve replica): ask a replica
            return bool(await self.handle.ready.remote())
        except Exception as e:
            raise from_ray(e) from e


def _replica_counts(deployment: str) -> dict[str, int]:
    """Replica states of a deployment of this application, e.g. {"RUNNING": 2}."""
    try:
        app_name = serve.get_replica_context().app_name
        status = serve.status().applications[app_name].deployments[deployment]
        return {str(state): int(count) for state, count in status.replica_states.items()}
    except Exception:  # status is informational; never fail /v1/models over it
        return {}


def _own_replica_counts() -> dict[str, int]:
    """Replica states of the deployment this code runs in (the gateway's)."""
    try:
        return _replica_counts(serve.get_replica_context().deployment)
    except Exception:  # not in a replica (tests): the configured count stands
        return {}


@serve.deployment
@serve.ingress()
class Gateway(SegServeGrpc, OipGrpc):
    def __init__(
        self,
        config: GatewayConfig,
        models: list[ModelConfig],
        handles: Mapping[str, DeploymentHandle[Any]],
    ) -> None:
        pin_process(config.cpu_affinity, "gateway")  # before the decode workers start
        self.routes = metrics.Counter(
            "segserve_routed_requests",
            "Answered requests by model, how it was chosen and whether the budget was met.",
            tag_keys=("model", "chosen_by", "budget_met"),  # type: ignore[arg-type]
        )
        self.handles = dict(handles)
        self.service = SegmentationService(
            {name: RayModelEndpoint(name, h) for name, h in self.handles.items()},
            models,
            config,
            replicas=self._running_replicas,
            on_result=self._count,
            gateways=self._running_gateways,
        )
        # RUNNING replicas per model (autoscaling changes them), refreshed in the background.
        self._replica_cache: dict[str, int] = {}
        self._gateway_count: int | None = None
        self._replicas_at = 0.0
        self._refreshing = False

    def __serve_build_asgi_app__(self) -> FastAPI:
        return http.build_app(self.service, HTTP_PROTOCOLS)

    def _count(self, result: SegmentResult) -> None:
        met = result.budget.met
        self.routes.inc(
            tags={
                "model": result.model,
                "chosen_by": result.budget.chosen_by,
                "budget_met": "none" if met is None else str(met).lower(),
            }
        )

    def _running_replicas(self, name: str) -> int | None:
        """Running replicas of a model as last seen (None until known); never blocks."""
        self._refresh_if_stale()
        return self._replica_cache.get(name)

    def _running_gateways(self) -> int | None:
        """Running replicas of this gateway deployment as last seen (None until known): each
        admits its share of the models' replica slots."""
        self._refresh_if_stale()
        return self._gateway_count

    def _refresh_if_stale(self) -> None:
        if not self._refreshing and time.monotonic() - self._replicas_at > _REPLICAS_REFRESH_S:
            self._refreshing = True
            asyncio.get_running_loop().create_task(self._refresh_replicas())

    async def _refresh_replicas(self) -> None:
        try:
            counts = await asyncio.to_thread(
                lambda: {n: _replica_counts(deployment_name(n)) for n in self.handles}
            )
            self._replica_cache = {
                name: states.get("RUNNING", 0) for name, states in counts.items() if states
            }
            own = await asyncio.to_thread(_own_replica_counts)
            self._gateway_count = own.get("RUNNING") or None
        finally:
            self._replicas_at = time.monotonic()
            self._refreshing = False
