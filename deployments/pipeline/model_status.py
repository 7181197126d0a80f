"""What /readyz and /v1/models answer from: each model's last known state, kept fresh in
the background.

A probe that called every model replica would wait in the replica's request queue:
under load readiness would time out and go 503 (a Kubernetes probe would pull a busy
pod), and a flood of /v1/models calls would take model slots. Here one task per
gateway refreshes each model every ``refresh_s`` (at most ``probe_timeout_s`` per
call) and the routes read the result. The task starts on the first read, in the
event loop that serves the routes, and restarts if that loop changed (tests).

Load errors stay out of responses: :func:`weights_reason` gives a stable code for
why a model runs on random weights, and the full text goes to the logs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from deployments.contract import ModelCard, ModelEndpoint
from deployments.pipeline.errors import SegServeError

logger = logging.getLogger("ray.serve")

#: ``weights_reason`` codes: why a model answers on random weights.
CONFIGURED_RANDOM = "configured_random"
PRETRAINED_UNREACHABLE = "pretrained_unreachable"


def weights_reason(policy: str, weights: str) -> str | None:
    """The stable reason code for a model's weights (None when they are pretrained)."""
    if weights != "random":
        return None
    return CONFIGURED_RANDOM if policy == "random" else PRETRAINED_UNREACHABLE


_logged_notes: set[tuple[str, str]] = set()


def log_load_note(model: str, note: str | None) -> None:
    """Log a model's weights load error once per gateway process (never to clients)."""
    if note and (model, note) not in _logged_notes:
        _logged_notes.add((model, note))
        logger.warning("model %r runs on random weights: %s", model, note)


@dataclass
class ModelState:
    """One model as last seen by the refresh."""

    ready: bool = False
    #: The model's last successful description (kept when a later refresh fails).
    details: dict[str, Any] | None = None
    card: ModelCard | None = None
    #: Why it is not ready, or why the last description failed (a client-safe message).
    error: str | None = None
    #: Monotonic time of the last refresh of this model (None: never refreshed).
    checked_at: float | None = None
    described_at: float | None = None


class ModelStatusBoard:
    """Each model's :class:`ModelState`, refreshed by one background task."""

    def __init__(
        self,
        endpoints: Mapping[str, ModelEndpoint],
        refresh_s: float,
        probe_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = endpoints
        self.refresh_s = refresh_s
        self.probe_timeout_s = probe_timeout_s
        self.clock = clock
        self.states = {name: ModelState() for name in endpoints}
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def current(self) -> dict[str, ModelState]:
        """The states; the first call (per event loop) waits for the first refresh."""
        self.start()
        assert self._first is not None
        # Bounded: each model's calls in a refresh time out after probe_timeout_s.
        await asyncio.shield(self._first)
        return self.states

    def start(self) -> None:
        """Start the refresh task in the running loop (no-op when it runs already)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        self._loop = loop
        self._first = loop.create_future()
        self._task = loop.create_task(self._run(self._first), name="segserve-model-status")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def aclose(self) -> None:
        """Stop the refresh task and wait for it (when it runs in this loop)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        if task.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self) -> None:
        """Refresh every model once, concurrently."""
        await asyncio.gather(*(self._refresh(name) for name in self.endpoints))

    async def _run(self, first: asyncio.Future[None]) -> None:
        try:
            while True:
                try:
                    await self.refresh()
                except Exception:  # never let a bug in one refresh stop the next
                    logger.exception("model status refresh failed")
                if not first.done():
                    first.set_result(None)
                await asyncio.sleep(self.refresh_s)
        finally:
            if not first.done():
                first.set_result(None)

    async def _refresh(self, name: str) -> None:
        endpoint = self.endpoints[name]
        state = self.states[name]
        timeout = self.probe_timeout_s
        try:
            state.ready = bool(await asyncio.wait_for(endpoint.ready(), timeout))
            state.error = None if state.ready else "not ready"
        except Exception as e:
            state.ready = False
            state.error = _client_message(e)
        try:
            state.details = dict(await asyncio.wait_for(endpoint.describe(), timeout))
            state.described_at = self.clock()
        except Exception as e:
            if state.error is None:
                state.error = _client_message(e)
        if state.card is None:
            with contextlib.suppress(Exception):  # what its replicas loaded, once known
                state.card = await asyncio.wait_for(endpoint.card(), timeout)
        state.checked_at = self.clock()


def _client_message(error: BaseException) -> str:
    """A message safe to show: our errors' own messages, nothing from anything else."""
    if isinstance(error, TimeoutError):
        return "not answering (loading or busy?)"
    if isinstance(error, SegServeError):
        return error.message
    return "not answering (loading?)"
