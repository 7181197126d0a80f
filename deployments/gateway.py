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
from collections.abc import Callable, Mapping
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

    def __init__(
        self, name: str, handle: DeploymentHandle[Any], states: ReplicaStates | None = None
    ) -> None:
        self.name = name
        self.handle = handle
        self.states = states or ReplicaStates()
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
        info["replicas"] = await self.states.of(deployment_name(self.name))
        return info

    async def ready(self) -> bool:
        """Whether a replica is RUNNING (Serve marks it so once its model loaded and warmed
        up), from the controller: never a call that waits in the model's request queue."""
        states = await self.states.of(deployment_name(self.name))
        if states:
            return states.get("RUNNING", 0) > 0
        try:  # no status (not in a Serve replica): ask a replica
            return bool(await self.handle.ready.remote())
        except Exception as e:
            raise from_ray(e) from e


class ReplicaStates:
    """Replica states of every deployment of this application, e.g.
    ``{"segserve_model_b0": {"RUNNING": 2}}``, from ``serve.status()``, shared.

    Each ``serve.status()`` has the controller build, and this process parse, the details
    of every application (about 10 ms of CPU on each side on an idle 2-core node, more
    under load), CPU taken from the models. So one snapshot serves every caller
    (readiness, ``/v1/models``, the admission's replica counts) until it is
    ``max_age_s`` old, and callers that find it stale together share one fetch (run in
    a thread: it blocks). Outside a Serve replica (tests) it is empty. ``fetch`` is the
    blocking call (``serve.status()`` by default).
    """

    def __init__(
        self,
        max_age_s: float = 1.0,
        fetch: Callable[[], dict[str, dict[str, int]]] | None = None,
    ) -> None:
        self.max_age_s = max_age_s
        self._call = fetch or _application_replica_counts
        self._snapshot: dict[str, dict[str, int]] = {}
        self._at = -float("inf")
        self._fetch: asyncio.Future[dict[str, dict[str, int]]] | None = None

    async def get(self, max_age_s: float | None = None) -> dict[str, dict[str, int]]:
        """The snapshot, fetched again first when older than ``max_age_s`` (default: the
        instance's)."""
        age = time.monotonic() - self._at
        if age <= (self.max_age_s if max_age_s is None else max_age_s):
            return self._snapshot
        return await asyncio.shield(self._fetching())

    def latest(self, max_age_s: float) -> dict[str, dict[str, int]]:
        """The snapshot as it is, never waiting; when older than ``max_age_s`` a fetch
        starts in the background (for calls that must not block, such as admission's)."""
        if time.monotonic() - self._at > max_age_s:
            self._fetching()
        return self._snapshot

    def _fetching(self) -> asyncio.Future[dict[str, dict[str, int]]]:
        """The fetch in flight on this loop, started if there is none."""
        loop = asyncio.get_running_loop()
        if self._fetch is None or self._fetch.get_loop() is not loop:
            self._fetch = loop.create_task(asyncio.to_thread(self._call))
            self._fetch.add_done_callback(self._store)
        return self._fetch

    def _store(self, fetch: asyncio.Future[dict[str, dict[str, int]]]) -> None:
        if self._fetch is fetch:
            self._fetch = None
        if not fetch.cancelled() and fetch.exception() is None:
            self._snapshot, self._at = fetch.result(), time.monotonic()

    async def of(self, deployment: str) -> dict[str, int]:
        """One deployment's states ({} when unknown)."""
        return (await self.get()).get(deployment, {})


def _application_replica_counts() -> dict[str, dict[str, int]]:
    """Replica states of every deployment of this application, from one ``serve.status()``."""
    try:
        app_name = serve.get_replica_context().app_name
        deployments = serve.status().applications[app_name].deployments
        return {
            name: {str(state): int(count) for state, count in status.replica_states.items()}
            for name, status in deployments.items()
        }
    except Exception:  # status is informational; never fail /v1/models over it
        return {}


def _own_deployment() -> str | None:
    """The deployment this code runs in (the gateway's); None outside a replica (tests)."""
    try:
        return str(serve.get_replica_context().deployment)
    except Exception:
        return None


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
        self.replica_states = ReplicaStates()
        self.service = SegmentationService(
            {
                name: RayModelEndpoint(name, h, self.replica_states)
                for name, h in self.handles.items()
            },
            models,
            config,
            replicas=self._running_replicas,
            on_result=self._count,
            gateways=self._running_gateways,
        )
        self._own_deployment = _own_deployment()

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
        """Running replicas of a model (autoscaling changes them) as last seen, refreshed
        in the background every few seconds (None until known); never blocks."""
        states = self.replica_states.latest(_REPLICAS_REFRESH_S).get(deployment_name(name))
        return states.get("RUNNING", 0) if states else None

    def _running_gateways(self) -> int | None:
        """Running replicas of this gateway deployment as last seen (None until known): each
        admits its share of the models' replica slots."""
        snapshot = self.replica_states.latest(_REPLICAS_REFRESH_S)
        return snapshot.get(self._own_deployment or "", {}).get("RUNNING") or None
