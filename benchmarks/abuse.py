"""Good requests while hostile clients attack: latency against idle, /healthz, peak RSS.

The gateway's HTTP app (service, decode pool, limits) runs under uvicorn in a child
process over a tiny SegFormer replica in a process of its own, reached as a Ray replica
is reached (no Ray: its proxy and scheduling are not what this measures).
First a good client alone sends ``--requests`` 640x480 JPEGs one after another and a
prober GETs /healthz every 20 ms: the idle figures. Then, for
``--attack-s`` seconds, ``--attackers`` clients send hostile files in a loop
(progressive scan bombs, JPEG fill bytes, empty PNG chunks, 100 MP decodes, junk
bodies at the byte limit), ``--slow`` connections trickle a body a byte a second, and
the same good client and prober run again. Prints JSON: p50/p95 of good requests idle
and under attack (goal: under-attack p50 within 2x of idle), the longest /healthz
(goal: under 100 ms), what the attackers were answered, and the peak RSS of the gateway
process and of its children (goal: gateway under ``--rss-bound-mb``). By default the
gateway, its decode workers and the replica run on the upper half of the CPUs and every client on
the lower half, in both phases: attackers are other machines, and their CPU is not what
the server is measured on (``--split-cpus off``: everything shares every CPU).

    python -m benchmarks.abuse [--attackers 8] [--slow 32] [--attack-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import ModelProcess, free_port
from deployments.config import ModelConfig
from tests.hostile_images import (
    jpeg_fill_bytes,
    png_16bit_100mp,
    png_many_empty_chunks,
    progressive_scan_bomb,
)
from tests.images import jpeg

MAX_REQUEST_BYTES = 8 * 1024 * 1024
ATTACKER_NICE = 10
HEALTHZ_EVERY_S = 0.02


# ------------------------------------------------------------------ the gateway process


def serve(port: int, workers: int, body_timeout_s: float, cpus: set[int] | None) -> None:
    """The child process: the HTTP app on ``port`` over a tiny SegFormer replica in a
    process of its own (the decode workers and the replica inherit the affinity ``cpus``)."""
    import uvicorn

    if cpus:
        os.sched_setaffinity(0, cpus)

    from deployments.config import GatewayConfig, LimitsConfig
    from deployments.pipeline.service import SegmentationService
    from deployments.protocols import http
    from tests.tiny_models import save_tiny_segformer

    directory = save_tiny_segformer(Path(tempfile.mkdtemp(prefix="abuse-model")))
    model = ModelConfig(name="tiny", framework="hf_segformer", source=str(directory))
    limits = LimitsConfig(
        max_request_bytes=MAX_REQUEST_BYTES, decode_workers=workers, body_timeout_s=body_timeout_s
    )
    service = SegmentationService(
        {"tiny": ModelProcess(model)}, [model], GatewayConfig(limits=limits)
    )
    uvicorn.run(
        http.build_app(service),
        host="127.0.0.1",
        port=port,
        log_level="error",
        limit_concurrency=512,
        timeout_keep_alive=30,
    )


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_status(int(entry.name)).get("PPid", "0"))
            except (OSError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def peak_rss_mb(pid: int) -> dict[str, float]:
    """Peak RSS (VmHWM) of the gateway process and the largest of its descendants."""
    gateway = int(_status(pid)["VmHWM"].split()[0]) / 1024
    workers = []
    for child in _descendants(pid):
        try:
            workers.append(int(_status(child)["VmHWM"].split()[0]) / 1024)
        except (OSError, KeyError):
            continue
    return {
        "gateway_peak_rss_mb": round(gateway, 1),
        "largest_decode_process_peak_rss_mb": round(max(workers, default=0.0), 1),
        "descendant_processes": len(workers),
    }


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """The server's CPUs (upper half) and the clients' (lower half); None on one CPU."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    half = len(available) // 2
    return set(available[half:]), set(available[:half])


# ------------------------------------------------------------------ clients


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


async def good_client(url: str, requests: int, pause_s: float) -> tuple[list[float], list[float]]:
    """Client-side latencies, and the server's own ``total`` for each request."""
    data = jpeg(640, 480)
    latencies, server = [], []
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for _ in range(requests):
            started = time.perf_counter()
            response = await http.post(
                "/v1/segment", content=data, headers={"Content-Type": "image/jpeg"}
            )
            if response.status_code != 200:
                raise RuntimeError(f"a good request got {response.status_code}: {response.text}")
            latencies.append((time.perf_counter() - started) * 1000)
            server.append(float(response.json()["timings_ms"]["total"]))
            await asyncio.sleep(pause_s)
    return latencies, server


async def healthz_prober(url: str, stop: asyncio.Event) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        # Untimed: a new client's first request includes its own connect and first-use
        # set-up (up to a tenth of a second here), which is not the server's answer.
        (await http.get("/healthz")).raise_for_status()
        while not stop.is_set():
            started = time.perf_counter()
            (await http.get("/healthz")).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(HEALTHZ_EVERY_S)
    return latencies


def attacks(heavy: bool) -> dict[str, tuple[bytes, str]]:
    """The hostile bodies (built on demand: decode workers import this module)."""
    chosen = {
        "progressive_scan_bomb": (progressive_scan_bomb(), "image/jpeg"),
        "jpeg_fill_bytes": (jpeg_fill_bytes(), "image/jpeg"),
        "png_many_empty_chunks": (png_many_empty_chunks(), "image/png"),
        "junk_at_byte_limit": (os.urandom(MAX_REQUEST_BYTES), "image/jpeg"),
    }
    if heavy:
        # Legitimate-looking 100 MP decodes (seconds of CPU each, within the limits): what
        # a capacity plan covers, not hostile bytes.
        chosen["png_16bit_100mp"] = (png_16bit_100mp(), "image/png")
    return chosen


async def attacker(
    url: str,
    index: int,
    stop: asyncio.Event,
    answers: collections.Counter[str],
    bodies: dict[str, tuple[bytes, str]],
) -> None:
    names = sorted(bodies)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        turn = index
        while not stop.is_set():
            name = names[turn % len(names)]
            turn += 1
            data, content_type = bodies[name]
            try:
                response = await http.post(
                    "/v1/segment", content=data, headers={"Content-Type": content_type}
                )
                code = response.json().get("error", {}).get("code", "ok")
                answers[f"{name}: {response.status_code} {code}"] += 1
            except httpx.HTTPError as e:
                answers[f"{name}: {type(e).__name__}"] += 1


async def slow_body(port: int, stop: asyncio.Event, answers: collections.Counter[str]) -> None:
    """A body announced at 1 MB that arrives a byte a second."""
    while not stop.is_set():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 1000000\r\n\r\n"
        )
        try:
            while not stop.is_set():
                writer.write(b"\xff")
                await writer.drain()
                try:
                    head = await asyncio.wait_for(reader.read(256), 1.0)
                except TimeoutError:
                    continue
                status = head.split(b" ", 2)[1].decode() if head else "closed"
                answers[f"slow_body: {status}"] += 1
                break
        except (ConnectionError, OSError):
            answers["slow_body: reset"] += 1
        finally:
            writer.close()


def _prober_process(url: str, stop: Any, out: Any) -> None:
    """/healthz latencies, in a process of its own: the attackers' and the good client's
    work on this side must not delay the probes."""

    async def run() -> list[float]:
        flag = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.05)
            flag.set()

        watcher = asyncio.create_task(watch())
        latencies = await healthz_prober(url, flag)
        await watcher
        return latencies

    out.put(asyncio.run(run()))


def _attack_process(
    url: str, port: int, attackers: int, slow: int, heavy: bool, stop: Any, out: Any
) -> None:
    """The hostile clients, in a process of their own (one event loop for all of them).

    At a lower priority than the good client and the prober that share their CPUs: on
    other machines, as attackers are, their work would not delay the good client's own.
    """
    os.nice(ATTACKER_NICE)

    async def run() -> dict[str, int]:
        flag = asyncio.Event()
        answers: collections.Counter[str] = collections.Counter()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.05)
            flag.set()

        bodies = attacks(heavy)
        tasks = [
            asyncio.create_task(attacker(url, i, flag, answers, bodies)) for i in range(attackers)
        ]
        tasks += [asyncio.create_task(slow_body(port, flag, answers)) for _ in range(slow)]
        await watch()
        await asyncio.gather(*tasks, return_exceptions=True)
        return dict(answers)

    out.put(asyncio.run(run()))


def phase(
    url: str,
    port: int,
    requests: int,
    attackers: int = 0,
    slow: int = 0,
    attack_s: float = 0.0,
    heavy: bool = False,
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    stop, probes, answers = context.Event(), context.Queue(), context.Queue()
    prober = context.Process(target=_prober_process, args=(url, stop, probes))
    prober.start()
    attack = None
    if attackers or slow:
        attack = context.Process(
            target=_attack_process, args=(url, port, attackers, slow, heavy, stop, answers)
        )
        attack.start()
        time.sleep(5.0)  # imports, then the attack reaching full strength
    else:
        time.sleep(2.0)
    started = time.perf_counter()
    good: list[float] = []
    server: list[float] = []
    while len(good) < requests or (attack and time.perf_counter() - started < attack_s):
        client_ms, server_ms = asyncio.run(good_client(url, 1, 0.05))
        good += client_ms
        server += server_ms
    stop.set()
    healthz: list[float] = probes.get(timeout=120)
    answered: dict[str, int] = answers.get(timeout=300) if attack else {}
    prober.join(30)
    if attack:
        attack.join(60)
    return {
        "good_requests": len(good),
        "good_p50_ms": percentile(good, 50),
        "good_server_total_p50_ms": percentile(server, 50),
        "good_p95_ms": percentile(good, 95),
        "healthz_probes": len(healthz),
        "healthz_max_ms": round(max(healthz), 1),
        "healthz_p99_ms": percentile(healthz, 99),
        "attacker_answers": dict(sorted(answered.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--attackers", type=int, default=8)
    parser.add_argument("--slow", type=int, default=32, help="slow-body connections")
    parser.add_argument("--attack-s", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=20, help="good requests, idle")
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--body-timeout-s", type=float, default=5.0)
    parser.add_argument("--rss-bound-mb", type=float, default=1500.0)
    parser.add_argument("--heavy", action="store_true", help="add 100 MP decodes")
    parser.add_argument(
        "--split-cpus",
        choices=("auto", "off"),
        default="auto",
        help="auto: the gateway on the upper half of the CPUs, every client on the lower half "
        "(attackers are other machines: their CPU is not the server's); off: all share",
    )
    parser.add_argument("--server-cpus", help=argparse.SUPPRESS)  # the child process
    options = parser.parse_args()
    if options.serve:
        server_cpus = (
            {int(c) for c in options.server_cpus.split(",")} if options.server_cpus else None
        )
        serve(options.serve, options.decode_workers, options.body_timeout_s, server_cpus)
        return
    server, clients = split_cpus() if options.split_cpus == "auto" else (None, None)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.abuse", "--serve", str(port),
         "--decode-workers", str(options.decode_workers),
         "--body-timeout-s", str(options.body_timeout_s),
         *(["--server-cpus", ",".join(map(str, sorted(server)))] if server else [])],
        stdout=sys.stderr,
    )  # fmt: skip
    if clients:
        os.sched_setaffinity(0, clients)  # the prober, attackers and good client inherit it
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.5)
        asyncio.run(good_client(url, 3, 0.0))  # warm
        idle = phase(url, port, options.requests)
        attacked = phase(
            url,
            port,
            options.requests,
            options.attackers,
            options.slow,
            options.attack_s,
            options.heavy,
        )
        rss = peak_rss_mb(child.pid)
    finally:
        child.terminate()
        child.wait(30)
    ratio = attacked["good_p50_ms"] / idle["good_p50_ms"]
    server_ratio = attacked["good_server_total_p50_ms"] / idle["good_server_total_p50_ms"]
    print(
        json.dumps(
            {
                "setup": {
                    "attackers": options.attackers,
                    "slow_bodies": options.slow,
                    "attack_s": options.attack_s,
                    "decode_workers": options.decode_workers,
                    "body_timeout_s": options.body_timeout_s,
                    "max_request_bytes": MAX_REQUEST_BYTES,
                    "cpus": os.cpu_count(),
                    "server_cpus": sorted(server) if server else "all",
                    "client_cpus": sorted(clients) if clients else "all",
                    "attacks": [*sorted(attacks(options.heavy)), "slow_body"],
                },
                "idle": idle,
                "under_attack": attacked,
                "p50_ratio_attack_to_idle": round(ratio, 2),
                "server_total_p50_ratio_attack_to_idle": round(server_ratio, 2),
                "p95_ratio_attack_to_idle": round(attacked["good_p95_ms"] / idle["good_p95_ms"], 2),
                "memory": rss,
                "goals": {
                    "p50_within_2x": ratio <= 2.0,
                    "healthz_under_100ms": attacked["healthz_max_ms"] < 100.0,
                    "gateway_rss_under_bound": rss["gateway_peak_rss_mb"] < options.rss_bound_mb,
                    "rss_bound_mb": options.rss_bound_mb,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
