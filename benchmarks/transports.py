"""Transports compared: /v1 HTTP, segserve.v1 gRPC, v2 HTTP (binary) and v2 gRPC.

One local Ray Serve with both proxies; async clients send the same photo over each
transport in a closed loop at concurrency 1, 8 and 32. Overhead is the client-measured
time minus the server's own ``total`` (what the transport, proxy and (de)serialisation
add), at concurrency 1. The v2 requests are what tritonclient sends by default: binary
tensors both ways (a JSON header, ``Inference-Header-Content-Length``, then the image;
gRPC ``raw_input_contents``), asking for the outputs ``/v1`` answers (``classes`` and
``mask_png``); ``--v2-labels`` adds a run with the raw ``labels`` tensor too. Photos:
``--small``/``--large``, default a small and the largest photo of
../shared/testdata/photos when present, else generated 640x480 and 6000x4000 JPEGs.
Prints JSON; the summary gives each v2 transport's throughput over its v1 counterpart
(the goal: within 10 %).

    python -m benchmarks.transports [--requests 16] [--v2-labels]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np

from benchmarks.common import SHARED_PHOTOS, local_serve_both, median, shipped_args
from benchmarks.jsonout import json_stdout
from clients.grpc_client import CHANNEL_OPTIONS, AsyncGrpcSegServeClient
from clients.http import AsyncSegServeClient
from clients.result import SegServeClientError
from deployments.protocols.oip import codecs
from deployments.protocols.oip import open_inference_grpc_pb2 as oip_pb
from deployments.protocols.oip import open_inference_grpc_pb2_grpc as oip_grpc
from tests.images import jpeg

CONCURRENCY = (1, 8, 32)
#: One call: the photo in, the server's own total time (ms) out.
Call = Callable[[bytes], Awaitable[float]]


def default_photos() -> dict[str, bytes]:
    small, large = SHARED_PHOTOS / "0046_boris.jpg", SHARED_PHOTOS / "0052_board.jpg"
    if small.exists() and large.exists():
        return {small.name: small.read_bytes(), large.name: large.read_bytes()}
    return {"generated_640x480.jpg": jpeg(640, 480), "generated_6000x4000.jpg": jpeg(6000, 4000)}


async def closed_loop(call: Call, data: bytes, clients: int, total: int) -> dict[str, Any]:
    latencies: list[float] = []
    overheads: list[float] = []
    errors: Counter[str] = Counter()
    remaining = [total]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter()
            try:
                server_ms = await call(data)
            except Exception as e:  # counted by kind: a refusal is a figure, not a crash
                errors[error_kind(e)] += 1
                continue
            elapsed = (time.perf_counter() - started) * 1000
            latencies.append(elapsed)
            overheads.append(elapsed - server_ms)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - started
    return {
        "concurrency": clients,
        "requests": total,
        "ok": len(latencies),
        "errors": dict(errors),
        # Answered images per second: refused requests do not count.
        "images_per_s": round(len(latencies) / wall, 3),
        "p50_ms": median(latencies) if latencies else None,
        "p95_ms": round(float(np.percentile(latencies, 95)), 1) if latencies else None,
        "overhead_p50_ms": median(overheads) if overheads else None,
    }


def error_kind(error: Exception) -> str:
    """``http 503 overloaded``, ``grpc RESOURCE_EXHAUSTED``, or the exception's type."""
    if isinstance(error, httpx.HTTPStatusError):
        code = ""
        with contextlib.suppress(Exception):
            code = str(error.response.json()["error"]["code"])
        return f"http {error.response.status_code} {code}".strip()
    if isinstance(error, grpc.aio.AioRpcError):
        return f"grpc {error.code().name}"
    if isinstance(error, SegServeClientError):  # segserve's own clients
        return f"{error.status} {error.code}"
    return type(error).__name__


def v2_http_call(http: httpx.AsyncClient, model: str, outputs: tuple[str, ...]) -> Call:
    """tritonclient's HTTP request, built by hand: tritonclient lives in .venv-clients."""

    async def call(data: bytes) -> float:
        raw = codecs.pack_bytes_items([data])
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": codecs.INPUT_NAME,
                        "datatype": codecs.BYTES,
                        "shape": [1],
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs],
            }
        ).encode()
        response = await http.post(
            f"/v2/models/{model}/infer",
            content=header + raw,
            headers={codecs.HEADER_LENGTH: str(len(header))},
        )
        response.raise_for_status()
        length = int(response.headers[codecs.HEADER_LENGTH])
        head = json.loads(response.content[:length])
        tensors = codecs.decode_rest_response(response.content, str(length))
        assert set(tensors) == set(outputs)
        return float(head["parameters"]["total_ms"])

    return call


def v2_grpc_call(
    stub: oip_grpc.GRPCInferenceServiceStub, model: str, outputs: tuple[str, ...]
) -> Call:
    async def call(data: bytes) -> float:
        request = oip_pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=codecs.INPUT_NAME, datatype=codecs.BYTES, shape=[1])
        request.raw_input_contents.append(codecs.pack_bytes_items([data]))
        for name in outputs:
            request.outputs.add(name=name)
        response = await stub.ModelInfer(request, timeout=600)
        tensors = codecs.decode_grpc_response(response)
        assert set(tensors) == set(outputs)
        return float(response.parameters["total_ms"].int64_param)

    return call


async def measure(
    url: str, target: str, model: str, photos: dict[str, bytes], requests: int, labels: bool
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    v1_outputs = (codecs.CLASSES, codecs.MASK_PNG)
    async with (
        AsyncSegServeClient(url, timeout=600) as http,
        AsyncGrpcSegServeClient(target, timeout=600) as rpc,
        # tritonclient sends no Accept-Encoding unless asked to; httpx would ask for gzip.
        httpx.AsyncClient(
            base_url=url, timeout=600, headers={"Accept-Encoding": "identity"}
        ) as v2_http,
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel,
    ):
        stub = oip_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]

        async def v1_http(data: bytes) -> float:
            return (await http.segment(data, model=model)).timings.total

        async def v1_grpc(data: bytes) -> float:
            return (await rpc.segment(data, model=model)).timings.total

        calls: dict[str, Call] = {
            "http": v1_http,
            "grpc": v1_grpc,
            "v2_http": v2_http_call(v2_http, model, v1_outputs),
            "v2_grpc": v2_grpc_call(stub, model, v1_outputs),
        }
        if labels:
            with_labels = (codecs.LABELS, *v1_outputs)
            calls["v2_http_labels"] = v2_http_call(v2_http, model, with_labels)
            calls["v2_grpc_labels"] = v2_grpc_call(stub, model, with_labels)
        for name, data in photos.items():
            for transport, call in calls.items():
                try:
                    await call(data)  # warm
                except Exception as e:  # a transport that cannot answer is reported, not fatal
                    rows.append({"photo": name, "transport": transport, "error": str(e)[-300:]})
                    continue
                for clients in CONCURRENCY:
                    row = await closed_loop(call, data, clients, max(requests, 2 * clients))
                    rows.append({"photo": name, "bytes": len(data), "transport": transport, **row})
                    # Progress (and what a run cut short still leaves) on stderr.
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict[str, Any]], photos: dict[str, bytes]) -> list[dict[str, Any]]:
    summary = []
    for name in photos:
        for clients in CONCURRENCY:
            by = {
                r["transport"]: r
                for r in rows
                if r["photo"] == name and r.get("concurrency") == clients
            }
            entry: dict[str, Any] = {"photo": name, "concurrency": clients}
            for transport, base in (("grpc", "http"), ("v2_http", "http"), ("v2_grpc", "grpc")):
                ratio = None  # None: one of the two failed (its error is in "runs")
                if transport in by and base in by and by[base]["images_per_s"]:
                    ratio = round(by[transport]["images_per_s"] / by[base]["images_per_s"], 3)
                entry[f"{transport}_over_{base}_throughput"] = ratio
            for transport, row in by.items():
                entry[f"{transport}_overhead_p50_ms"] = row["overhead_p50_ms"]
            summary.append(entry)
    return summary


def run() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", type=Path)
    parser.add_argument("--large", type=Path)
    parser.add_argument("--requests", type=int, default=12, help="per run (at least 2 per client)")

    parser.add_argument("--v2-labels", action="store_true", help="also v2 with the labels tensor")
    options = parser.parse_args()
    photos = default_photos()
    if options.small and options.large:
        photos = {p.name: p.read_bytes() for p in (options.small, options.large)}
    args = shipped_args()
    model = args.gateway.default_model or args.models[0].name
    with local_serve_both(args) as (url, target):
        rows = asyncio.run(measure(url, target, model, photos, options.requests, options.v2_labels))
    return {
        "benchmark": "transports",
        "model": model,
        "summary": summarise(rows, photos),
        "runs": rows,
    }


def main() -> None:
    with json_stdout() as emit:
        emit(run())


if __name__ == "__main__":
    main()
