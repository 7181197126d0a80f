"""A multi-node Ray cluster on this machine: GPU placement, autoscaling, overload, node loss.

``ray.cluster_utils.Cluster`` starts a head node (CPUs only: controller, proxies,
gateway) and two worker nodes that each declare one logical GPU. The tiny
SegFormer asks for half a GPU per replica and autoscales between 1 and 4
replicas, so four replicas fill both GPU nodes. A second model with a queue of
two shows overload answered with 503 / RESOURCE_EXHAUSTED.

The module runs its own Ray cluster: it must not share a process with another
Ray instance (tests/integration's session one), so it skips when one is up;
``pytest tests`` runs this folder first, and the module shuts its cluster down.
Timings are printed (``-s``), never asserted.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from clients.grpc_client import CHANNEL_OPTIONS
from deployments.app import build_app
from deployments.config import AppArgs, deployment_name, parse_args, ray_grpc_environment
from deployments.protocols import segserve_pb2 as pb
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from deployments.protocols.wire import ERROR_CODE_METADATA_KEY
from tests.images import jpeg
from tests.integration.conftest import GRPC_SERVICER, free_port

APP = "segserve"
MAX_REPLICAS = 4
#: Every wait polls up to this long; a healthy run needs a fraction of it.
PATIENCE_S = 150.0
IMAGE = jpeg(64, 64, seed=5)


def cluster_args(tiny_dir: Path) -> AppArgs:
    return parse_args(
        {
            "gateway": {
                "default_model": "tiny",
                # More CPU than a GPU node has: gateways stay on the head (as on a
                # KubeRay head or CPU group), so losing a GPU node loses only models.
                "num_cpus": 1.5,
            },
            "models": [
                {
                    "name": "tiny",
                    "framework": "hf_segformer",
                    "source": str(tiny_dir),
                    "weights": "pretrained",
                    "num_gpus": 0.5,  # two replicas per GPU node
                    "num_cpus": 0.5,
                    "cpu_threads": 1,
                    # A request waits up to 0.2 s for its batch: load shows up as
                    # ongoing requests, which is what the autoscaler counts.
                    "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.2},
                    "autoscaling_config": {
                        "min_replicas": 1,
                        "max_replicas": MAX_REPLICAS,
                        "target_ongoing_requests": 1,
                        "upscale_delay_s": 1,
                        "downscale_delay_s": 4,
                        "look_back_period_s": 2,
                        "metrics_interval_s": 0.5,
                    },
                },
                {
                    # One request at a time, two waiting, each ~0.5 s: the 4th
                    # concurrent request is over capacity.
                    "name": "narrow",
                    "framework": "hf_segformer",
                    "source": str(tiny_dir),
                    "weights": "pretrained",
                    # Like the gateway, more CPU than a GPU node has: on a GPU node it
                    # would take the CPU that the tiny model's second replica needs.
                    "num_cpus": 1.5,
                    "cpu_threads": 1,
                    "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.5},
                    "max_ongoing_requests": 1,
                    "max_queued_requests": 2,
                },
            ],
        }
    )


@dataclass
class ServedCluster:
    cluster: Cluster
    url: str
    grpc_target: str
    gpu_nodes: dict[str, Any]  # node id -> the Cluster's node object
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def served_cluster(tiny_segformer_dir: Path) -> Iterator[ServedCluster]:
    if ray.is_initialized():
        pytest.skip("Ray already runs in this process; run tests/cluster in its own pytest run")
    started = time.monotonic()
    # Cluster() records its address in $RAY_TMPDIR/ray/ray_current_cluster, where a plain
    # ray.init() or `serve run` on this machine would find and join it: keep it private.
    environment = pytest.MonkeyPatch()
    tmp = tempfile.mkdtemp(prefix="sgc", dir="/tmp")  # short: socket paths live under it
    environment.setenv("RAY_TMPDIR", tmp)
    # Ray's gRPC proxy refuses messages above the request limit (read when it starts).
    for name, value in ray_grpc_environment(
        cluster_args(tiny_segformer_dir).gateway.limits
    ).items():
        environment.setenv(name, value)
    cluster = Cluster(
        initialize_head=True,
        # Logical CPUs: the gateway's 1.5 and the narrow model's 1.5 (one core would do).
        head_node_args={"num_cpus": 3, "num_gpus": 0, "include_dashboard": False},
    )
    try:
        # GPU nodes: 1 CPU + 1 GPU each, room for two tiny replicas (0.5 CPU + 0.5 GPU).
        workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        port, grpc_port = free_port(), free_port()
        # One proxy, on the head: every node of this cluster shares one host (and port).
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": "127.0.0.1", "port": port},
            grpc_options={"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
        )
        serve.run(build_app(cluster_args(tiny_segformer_dir)), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, "ready")
        served = ServedCluster(
            cluster=cluster,
            url=url,
            grpc_target=f"127.0.0.1:{grpc_port}",
            gpu_nodes={node.node_id: node for node in workers},
        )
        served.timings["cluster_and_app_start_s"] = time.monotonic() - started
        yield served
        print(f"\ncluster timings: {served.timings}")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            environment.undo()
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], bool], what: str, timeout: float = PATIENCE_S) -> float:
    """Poll until ``condition()``; the seconds it took."""
    started = time.monotonic()
    last_error: Exception | None = None
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except Exception as e:  # a replica going away mid-poll: poll again
            last_error = e
        if time.monotonic() - started > timeout:
            raise AssertionError(f"waited {timeout:.0f} s for: {what} (last error: {last_error!r})")
        time.sleep(0.25)


def running_replicas(model: str = "tiny") -> int:
    status = serve.status().applications[APP].deployments[deployment_name(model)]
    return int(status.replica_states.get("RUNNING", 0))  # type: ignore[call-overload]


def replica_nodes(model: str = "tiny", calls: int = 80) -> dict[str, str]:
    """Replica id -> node id, from the replicas themselves (describe)."""
    handle = serve.get_deployment_handle(deployment_name(model), app_name=APP)
    seen: dict[str, str] = {}
    for _ in range(calls):
        info = handle.describe.remote().result(timeout_s=30)
        seen[info["replica"]] = info["node_id"]
        if len(seen) >= running_replicas(model):
            break
    return seen


@dataclass
class Outcome:
    status: int | None  # None: no HTTP answer at all (reset, timeout)
    code: str | None  # the service's error code, for errors
    seconds: float
    message: str | None = None


class Load:
    """``clients`` concurrent HTTP clients segmenting in a loop until stopped."""

    def __init__(self, url: str, clients: int, model: str = "tiny") -> None:
        self.url, self.clients, self.model = url, clients, model
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "a request never finished"
        return self.outcomes

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self.clients)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            self.outcomes.append(await segment(client, self.model))


async def segment(client: httpx.AsyncClient, model: str) -> Outcome:
    started = time.monotonic()
    try:
        response = await client.post(
            "/v1/segment",
            params={"model": model, "outputs": "classes"},
            content=IMAGE,
            headers={"Content-Type": "image/jpeg"},
        )
    except httpx.HTTPError:
        return Outcome(None, None, time.monotonic() - started)
    code = message = None
    if response.status_code != 200:
        try:
            code = response.json()["error"]["code"]
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            code = "<not the service's JSON error>"
    return Outcome(response.status_code, code, time.monotonic() - started, message)


def summary(outcomes: list[Outcome]) -> Counter[tuple[int | None, str | None]]:
    return Counter((o.status, o.code) for o in outcomes)


# ---------------------------------------------------------------------------- tests


def test_replicas_land_on_gpu_nodes_and_say_they_run_on_cpu(
    served_cluster: ServedCluster,
) -> None:
    nodes = replica_nodes()
    assert nodes and set(nodes.values()) <= set(served_cluster.gpu_nodes), nodes
    models = httpx.get(f"{served_cluster.url}/v1/models", timeout=30).json()["models"]
    tiny = next(m for m in models if m["name"] == "tiny")
    # A logical GPU (no CUDA here): the replica runs on CPU and says why.
    assert tiny["device"]["kind"] == "cpu"
    assert "GPU assigned but CUDA is not available" in tiny["device"]["fallback_reason"]
    assert tiny["node_id"] in served_cluster.gpu_nodes
    assert tiny["autoscaling"]["max_replicas"] == MAX_REPLICAS
    narrow = next(m for m in models if m["name"] == "narrow")
    assert narrow["device"]["fallback_reason"] is None  # no GPU asked, none missing


def test_overload_is_rejected_fast_and_accepted_requests_complete(
    served_cluster: ServedCluster,
) -> None:
    async def burst() -> list[Outcome]:
        async with httpx.AsyncClient(base_url=served_cluster.url, timeout=60) as client:
            return list(await asyncio.gather(*(segment(client, "narrow") for _ in range(20))))

    outcomes = asyncio.run(burst())
    counts = summary(outcomes)
    rejected = [o.seconds for o in outcomes if o.status == 503]
    accepted = [o.seconds for o in outcomes if o.status == 200]
    print(
        f"\nHTTP burst of 20 at capacity 3: {dict(counts)}; rejected in median "
        f"{statistics.median(rejected) * 1000:.0f} ms, accepted in median "
        f"{statistics.median(accepted) * 1000:.0f} ms"
    )
    assert set(counts) <= {(200, None), (503, "overloaded")}, counts
    # Capacity is 1 running + 2 queued, but Ray's queue bound is enforced per caller and
    # races with replies (2 accepted has been seen): some accepted, most rejected.
    assert counts[(503, "overloaded")] >= 10 and counts[(200, None)] >= 1, counts

    async def grpc_burst() -> list[tuple[grpc.StatusCode, str | None, str | None]]:
        async with grpc.aio.insecure_channel(
            served_cluster.grpc_target, options=CHANNEL_OPTIONS
        ) as channel:
            stub = pb_grpc.SegmentationStub(channel)

            async def one() -> tuple[grpc.StatusCode, str | None, str | None]:
                try:
                    await stub.Segment(
                        pb.SegmentRequest(image=IMAGE, model="narrow", outputs=["classes"]),
                        timeout=60,
                    )
                    return grpc.StatusCode.OK, None, None
                except grpc.aio.AioRpcError as e:
                    trailing = dict(cast(Any, e.trailing_metadata()) or ())
                    return e.code(), e.details(), trailing.get(ERROR_CODE_METADATA_KEY)

            return list(await asyncio.gather(*(one() for _ in range(20))))

    answers = asyncio.run(grpc_burst())
    codes = Counter(code for code, _, _ in answers)
    print(f"gRPC burst of 20: {dict(codes)}")
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= 10 and codes[grpc.StatusCode.OK] >= 1
    # The same error on both transports: code and message, no stack trace.
    http_messages = {o.message for o in outcomes if o.status == 503}
    grpc_errors = {(details, code) for status, details, code in answers if details}
    assert grpc_errors == {(message, "overloaded") for message in http_messages}
    assert all("Traceback" not in str(m) for m in http_messages)


def test_load_scales_out_across_gpu_nodes_and_back_in(served_cluster: ServedCluster) -> None:
    assert running_replicas() == 1
    with Load(served_cluster.url, clients=8) as load:
        scale_up_s = wait_for(lambda: running_replicas() == MAX_REPLICAS, "4 running replicas")
        nodes = replica_nodes()
        time.sleep(2)  # keep the load on four replicas for a moment
    outcomes = load.outcomes
    served_cluster.timings["scale_up_1_to_4_s"] = scale_up_s
    print(f"\nscale-up 1 -> {MAX_REPLICAS}: {scale_up_s:.1f} s; {dict(summary(outcomes))}")
    assert len(set(nodes)) == MAX_REPLICAS
    assert set(nodes.values()) == set(served_cluster.gpu_nodes), "replicas on both GPU nodes"
    assert summary(outcomes) == Counter({(200, None): len(outcomes)})

    # One client, one request at a time: the load now wants one replica.
    with Load(served_cluster.url, clients=1) as light:
        scale_down_s = wait_for(lambda: running_replicas() == 1, "back to 1 replica")
        time.sleep(1)
    served_cluster.timings["scale_down_4_to_1_s"] = scale_down_s
    print(f"scale-down {MAX_REPLICAS} -> 1: {scale_down_s:.1f} s; {dict(summary(light.outcomes))}")
    assert light.outcomes and all(o.status == 200 for o in light.outcomes)


def test_losing_a_gpu_node_under_load_answers_every_request_and_recovers(
    served_cluster: ServedCluster,
) -> None:
    with Load(served_cluster.url, clients=8) as load:
        wait_for(
            lambda: set(replica_nodes().values()) == set(served_cluster.gpu_nodes),
            "replicas on both GPU nodes",
        )
        victim_id, victim = next(iter(served_cluster.gpu_nodes.items()))
        before = len(load.outcomes)
        removed_at = time.monotonic()
        served_cluster.cluster.remove_node(victim)
        del served_cluster.gpu_nodes[victim_id]
        # Keep the load on until the survivors answer again.
        wait_for(
            lambda: (
                sum(o.status == 200 for o in load.outcomes[before:]) >= 20
                and set(replica_nodes().values()) <= set(served_cluster.gpu_nodes)
            ),
            "answers from the remaining node",
        )
        served_cluster.timings["node_loss_to_healthy_s"] = time.monotonic() - removed_at
    counts = summary(load.outcomes)
    print(f"\nnode removed under load: {dict(counts)}; timings {served_cluster.timings}")
    # Every request got an answer: a result, or the service's own JSON error (503).
    assert all(o.status is not None for o in load.outcomes), counts
    assert set(counts) <= {(200, None), (503, "not_ready"), (503, "overloaded")}, counts
    response = httpx.post(
        f"{served_cluster.url}/v1/segment",
        params={"model": "tiny"},
        content=IMAGE,
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 200
    assert set(replica_nodes().values()) <= set(served_cluster.gpu_nodes)
