"""A bounded pool of decode worker processes with a deadline that is really enforced.

``asyncio.to_thread(decode_image, ...)`` cannot be cancelled: a hostile upload that
decodes for minutes holds its thread after the request has timed out, and a few
of them stall every decode. Here each decode runs in a worker process; a worker
that passes the deadline is killed and replaced, and its request gets a 400
``decode_timeout`` (:class:`~deployments.pipeline.errors.DecodeTimeout`: the
structural pre-checks bound what a real image costs, so one that still runs
past the deadline is treated as hostile, not retried). When every worker is busy
and ``queue`` more decodes wait, the next is refused at once with 503
``overloaded``.

Each worker has one OS thread here that owns its pipe (send the bytes, wait at
most the deadline, read the result), so the event loop never blocks on a pipe and
never waits on an unbounded thread. Pixels come back as raw bytes read straight
into a fresh numpy array (``recv_bytes_into``): one copy, no pickling of the
array. ``workers=0`` decodes in one thread of this process instead (tiny
deployments and tests): the pre-checks still bound the work, but nothing can stop
a decode once it runs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue as queue_module
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from deployments.pipeline.errors import (
    CorruptImage,
    DecodeTimeout,
    InternalError,
    NotReady,
    Overloaded,
    SegServeError,
)
from deployments.pipeline.imaging import (
    DecodedImage,
    ImageHeader,
    ImageLimits,
    InputSpec,
    decode_image,
    probe_image,
)
from deployments.pipeline.probe import refuse_at_once, refuse_prefix

#: How long a killed worker may take to exit before we stop waiting for it.
_JOIN_S = 5.0
#: How long a new worker may take to start (import the main module, Pillow, numpy) before
#: its first job; not part of any job's deadline.
_START_S = 120.0


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    started: bool = False


def _worker_main(conn: Connection) -> None:
    """A decode worker: one job (a probe or a decode) at a time, until the pipe closes."""
    try:
        conn.send(("started", None))
    except (EOFError, OSError):
        return
    while True:
        try:
            kind, spec, limits, header = conn.recv()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            if kind == "probe":
                conn.send(("header", probe_image(data, limits)))
                continue
            decoded = decode_image(data, spec, limits, header)
        except SegServeError as e:
            conn.send(("error", e))
            continue
        except Exception as e:  # decode_image maps the decode path; anything else is a bug
            conn.send(("error", InternalError(f"decode worker failed: {type(e).__name__}")))
            continue
        pixels = np.ascontiguousarray(decoded.pixels, dtype=np.uint8)
        meta = {
            "shape": pixels.shape,
            "width": decoded.width,
            "height": decoded.height,
            "format": decoded.format,
            "decoded_size": decoded.decoded_size,
            "decode_ms": decoded.decode_ms,
        }
        conn.send(("ok", meta))
        conn.send_bytes(pixels.reshape(-1).data)


class DecodePool:
    """Decode uploads in ``workers`` processes, ``queue`` more waiting, ``timeout_s`` each.

    ``timeout_s`` counts from when a worker receives the job (time spent queued is
    the caller's budget to bound, e.g. with ``asyncio.wait_for``).
    """

    def __init__(
        self, workers: int, queue: int, timeout_s: float, *, start_method: str = "forkserver"
    ) -> None:
        if workers < 0 or queue < 0 or timeout_s <= 0:
            raise ValueError("DecodePool needs workers >= 0, queue >= 0 and timeout_s > 0")
        self.workers = workers
        self.queue = queue
        self.timeout_s = timeout_s
        self._capacity = max(1, workers) + queue
        self._pending = 0
        self._closed = False
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode")
        self._idle: queue_module.SimpleQueue[_Worker] = queue_module.SimpleQueue()
        self._all: list[_Worker] = []
        # Any: the typeshed BaseContext lacks Process; every concrete context has it.
        self._context: Any = None
        if workers:
            self._context = multiprocessing.get_context(start_method)
            if start_method == "forkserver":
                # Workers fork from a server that has Pillow and numpy imported already.
                self._context.set_forkserver_preload(["deployments.pipeline.imaging"])
            for _ in range(workers):
                worker = self._start_worker()
                self._idle.put(worker)

    # ------------------------------------------------------------ public

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Decodes running or queued now."""
        return self._pending

    async def probe(self, data: bytes, limits: ImageLimits) -> ImageHeader:
        """:func:`probe_image` in a worker, under the same bound and deadline as a decode.

        Not in a thread of this process: the pre-checks' regular expressions and Pillow's
        header parsers hold the GIL, and on the gateway's process that would stall its
        event loop (and /healthz) for as long as a hostile header takes to walk.
        """
        refuse_at_once(data, limits)  # junk never crosses into a worker,
        refuse_prefix(data, limits)  # nor do fill-byte, chunk and scan bombs
        header: ImageHeader = await self._submit("probe", data, None, limits, None, None)
        return header

    async def decode(
        self,
        data: bytes,
        spec: InputSpec,
        limits: ImageLimits,
        header: ImageHeader | None = None,
        timeout_s: float | None = None,
    ) -> DecodedImage:
        """Decode in a worker; 503 ``overloaded`` at once when the pool and its queue are full.

        ``timeout_s`` (at most the pool's) shortens the deadline, e.g. to what is left of
        the request's budget.
        """
        decoded: DecodedImage = await self._submit("decode", data, spec, limits, header, timeout_s)
        return decoded

    async def _submit(
        self,
        kind: str,
        data: bytes,
        spec: InputSpec | None,
        limits: ImageLimits,
        header: ImageHeader | None,
        timeout_s: float | None,
    ) -> Any:
        if self._closed:
            raise NotReady("the decode pool is closed", code="decode_pool_closed")
        if self._pending >= self._capacity:
            raise Overloaded(
                f"all {max(1, self.workers)} decoders are busy and {self.queue} requests "
                "are waiting; retry later"
            )
        deadline = self.timeout_s if timeout_s is None else max(0.0, min(timeout_s, self.timeout_s))
        self._pending += 1
        loop = asyncio.get_running_loop()
        job: Future[Any]
        if self.workers:
            job = self._threads.submit(self._run, kind, data, spec, limits, header, deadline)
        elif kind == "probe":
            job = self._threads.submit(probe_image, data, limits)
        else:
            assert spec is not None
            job = self._threads.submit(decode_image, data, spec, limits, header)
        # Released when the job really ends (not when a cancelled caller stops waiting), so
        # the bound counts every decode still holding a worker or a queue place.
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(job)

    def close(self) -> None:
        """Stop the workers; decodes in flight fail, later calls get 503."""
        self._closed = True
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            workers, self._all = self._all, []
        for worker in workers:
            self._stop(worker)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ workers

    def _release(self) -> None:
        self._pending -= 1

    def _start_worker(self) -> _Worker:
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main, args=(child,), name="segserve-decode", daemon=True
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        with self._lock:
            self._all.append(worker)
        return worker

    def _stop(self, worker: _Worker) -> None:
        worker.conn.close()
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(_JOIN_S)
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def _replace(self, worker: _Worker) -> _Worker:
        self._stop(worker)
        return self._start_worker()

    def _run(
        self,
        kind: str,
        data: bytes,
        spec: InputSpec | None,
        limits: ImageLimits,
        header: ImageHeader | None,
        timeout_s: float,
    ) -> DecodedImage | ImageHeader:
        worker = self._idle.get()  # never waits: one thread per worker
        try:
            try:
                if not worker.started:
                    # A fresh worker's start-up is not the job's time.
                    if not worker.conn.poll(_START_S):
                        worker = self._replace(worker)
                        raise NotReady("a decode worker did not start; retry", code="decoder_start")
                    worker.conn.recv()
                    worker.started = True
                worker.conn.send((kind, spec, limits, header))
                worker.conn.send_bytes(data)
                if not worker.conn.poll(timeout_s):
                    worker = self._replace(worker)
                    what = "reading the header" if kind == "probe" else "decoding"
                    raise DecodeTimeout(
                        f"{what} took longer than {timeout_s:g} s; the decoder was stopped"
                    )
                status, payload = worker.conn.recv()
                if status == "error":
                    assert isinstance(payload, SegServeError)
                    raise payload
                if status == "header":
                    assert isinstance(payload, ImageHeader)
                    return payload
                return self._receive(worker.conn, payload)
            except (EOFError, OSError) as e:
                if self._closed:
                    raise NotReady("the decode pool is closed", code="decode_pool_closed") from e
                worker = self._replace(worker)
                raise CorruptImage("the decoder process died on this image") from e
        finally:
            if not self._closed:
                self._idle.put(worker)

    @staticmethod
    def _receive(conn: Connection, meta: dict[str, Any]) -> DecodedImage:
        pixels = np.empty(meta["shape"], dtype=np.uint8)
        conn.recv_bytes_into(pixels.reshape(-1).data)
        return DecodedImage(
            pixels=pixels,
            width=meta["width"],
            height=meta["height"],
            format=meta["format"],
            decoded_size=(int(meta["decoded_size"][0]), int(meta["decoded_size"][1])),
            decode_ms=meta["decode_ms"],
        )


_shared: dict[tuple[int, int, float, str], DecodePool] = {}
_shared_lock = threading.Lock()


def shared_pool(
    workers: int, queue: int, timeout_s: float, *, start_method: str = "forkserver"
) -> DecodePool:
    """The process's pool of these settings, started on first use.

    One pool per gateway process: services built with the same settings (one per
    gateway replica; many in tests) share its workers instead of each starting its own.
    """
    key = (workers, queue, timeout_s, start_method)
    with _shared_lock:
        pool = _shared.get(key)
        if pool is None or pool.closed:
            pool = DecodePool(workers, queue, timeout_s, start_method=start_method)
            _shared[key] = pool
        return pool
