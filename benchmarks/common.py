"""Helpers shared by the benchmark scripts: a local Ray Serve, photos, bare adapters."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from deployments.config import AppArgs, ModelConfig, load_serve_config

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = REPO.parent / "shared" / "testdata" / "photos"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def shipped_args() -> AppArgs:
    return load_serve_config(REPO / "serve_config.yaml")


def default_model(args: AppArgs) -> ModelConfig:
    return next(m for m in args.models if m.name == args.default_model)


def bare_threads(config: ModelConfig) -> int:
    """Torch threads a replica of ``config`` runs on (its ``cpu_threads``, else its CPUs)."""
    return config.cpu_threads or max(1, math.ceil(config.num_cpus))


def load_adapter(config: ModelConfig, threads: int) -> Any:
    """The model's adapter, loaded in this process (no Ray) on ``threads`` CPU threads."""
    from deployments.adapters.device import plan_device
    from deployments.adapters.registry import adapter_class
    from deployments.pipeline.process import retain_freed_memory

    if config.retain_freed_memory:  # the heap policy the replicas run with
        retain_freed_memory()

    return adapter_class(config.framework).load(config, plan_device(0, threads, threads))


def photo_paths(directory: str | None, scratch: Path) -> list[Path]:
    """The given folder, else the shared test photos when present, else generated ones."""
    if directory:
        root = Path(directory)
    elif SHARED_PHOTOS.is_dir():
        root = SHARED_PHOTOS
    else:
        root = generate_photos(scratch)
    return sorted(p for p in root.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


def generate_photos(directory: Path) -> Path:
    from tests.images import encode, scene

    directory.mkdir(parents=True, exist_ok=True)
    for width, height in [
        (3, 15),
        (150, 150),
        (640, 480),
        (1920, 1080),
        (4000, 3000),
        (6000, 4000),
    ]:
        path = directory / f"generated_{width}x{height}.jpg"
        if not path.exists():
            path.write_bytes(encode(scene(width, height, seed=width), "JPEG", quality=90))
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


GRPC_SERVICER = "deployments.protocols.segserve_pb2_grpc.add_SegmentationServicer_to_server"
OIP_GRPC_SERVICER = (
    "deployments.protocols.oip.open_inference_grpc_pb2_grpc"
    ".add_GRPCInferenceServiceServicer_to_server"
)


@contextlib.contextmanager
def local_serve(args: AppArgs, num_cpus: int | None = None) -> Iterator[str]:
    """Run the application on a fresh local Ray; yields its base URL."""
    with local_serve_both(args, num_cpus) as (url, _):
        yield url


@contextlib.contextmanager
def local_serve_both(args: AppArgs, num_cpus: int | None = None) -> Iterator[tuple[str, str]]:
    """Run the application on a fresh local Ray; yields (HTTP base URL, gRPC target)."""
    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.config import ray_grpc_environment

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's gRPC proxy refuses messages above the request limit (read when it starts).
    os.environ.update(ray_grpc_environment(args.gateway.limits))
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        port, grpc_port = free_port(), free_port()
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            grpc_options={
                "port": grpc_port,
                "grpc_servicer_functions": [GRPC_SERVICER, OIP_GRPC_SERVICER],
            },
        )
        serve.run(build_app(args), name="segserve", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            if time.time() > deadline:
                raise RuntimeError("service never became ready")
            time.sleep(0.5)
        yield url, f"127.0.0.1:{grpc_port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        wait_for_ray_exit()


class StealMeter:
    """The share of this machine's CPU time its hypervisor gave to others (``steal`` in
    ``/proc/stat``) between :meth:`start` and :meth:`stop`: on a shared VM a timing taken
    while it is high is not comparable with one taken while it is not. None off Linux."""

    def __init__(self) -> None:
        self._start: list[int] | None = None

    @staticmethod
    def _sample() -> list[int] | None:
        try:
            with open("/proc/stat") as stat:
                return [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None

    def start(self) -> StealMeter:
        self._start = self._sample()
        return self

    def stop(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None or len(end) < 8:
            return None
        delta = [b - a for a, b in zip(self._start, end, strict=False)]
        total = sum(delta[:8])  # user .. steal (guest time is counted in user already)
        return round(delta[7] / total, 3) if total > 0 else None


def wait_for_ray_exit(timeout_s: float = 30.0) -> None:
    """Wait until the local Ray's processes (replicas, raylet, GCS) are gone: they linger for
    seconds after ``ray.shutdown()``, and what is timed next would share the cores with them.
    Linux (``/proc``) only; elsewhere it returns at once."""
    proc = Path("/proc")
    deadline = time.monotonic() + timeout_s
    while proc.is_dir() and time.monotonic() < deadline:
        if not any(_is_ray_process(entry) for entry in proc.iterdir() if entry.name.isdigit()):
            return
        time.sleep(0.25)


def _is_ray_process(entry: Path) -> bool:
    try:
        command = (entry / "cmdline").read_bytes()
    except OSError:
        return False
    return command.startswith(b"ray::") or any(
        part in command for part in (b"/ray/core/src/ray/", b"ray/dashboard/", b"ray/_private/")
    )


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else float("nan")


# ------------------------------------------------------------------ a replica without Ray

_core: Any = None


def _load(model: Any, parent: int) -> None:
    """In the model's process: build its core (as a Ray replica does at start), and exit
    when the gateway process is gone, however it ended."""
    global _core
    import threading

    from deployments.adapters.device import plan_device
    from deployments.model_core import ModelCore

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    _core = ModelCore(model, plan_device(0, 1, 1))


def _card() -> Any:
    return _core.card()


def _predict(request: Any) -> Any:
    request.receive(_core.clock)
    (result,) = _core.run_batch([request])
    return result


class ModelProcess:
    """The model in a process of its own, as a Ray replica is: its Python (and the GIL)
    never stalls the gateway's event loop. One request at a time, in arrival order."""

    def __init__(self, model: Any) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(
            1, context, initializer=_load, initargs=(model, os.getpid())
        )
        self._card = self.pool.submit(_card).result()

    async def card(self) -> Any:
        return self._card

    async def predict(self, request: Any) -> Any:
        from deployments.pipeline.errors import SegServeError

        result = await asyncio.get_running_loop().run_in_executor(self.pool, _predict, request)
        if isinstance(result, SegServeError):
            raise result
        return result

    async def describe(self) -> dict[str, Any]:
        return {"name": self._card.name}

    async def ready(self) -> bool:
        return True
