"""Admission control on every protocol, in-process: a full model is refused with 503
``overloaded`` (gRPC RESOURCE_EXHAUSTED) before its upload is read or decoded, other
models are unaffected, and every way a request ends gives its slot back.

The model ``slow`` holds ``max_ongoing_requests=1`` + ``max_queued_requests=1``: two
requests in flight. Its predictions wait on a gate the test opens, so "full" is a state
the test sets, not a race; no assertion is about time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from deployments.config import GatewayConfig, LimitsConfig, ModelConfig
from deployments.contract import ModelCard, Prediction, PredictRequest
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.pipeline.decode_pool import DecodePool
from deployments.pipeline.service import SegmentationService
from deployments.protocols import http, image
from deployments.protocols import segserve_pb2 as pb
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from deployments.protocols.grpc import SegServeGrpc
from deployments.protocols.oip import http as oip_http
from deployments.protocols.oip import open_inference_grpc_pb2 as oip_pb
from deployments.protocols.oip import open_inference_grpc_pb2_grpc as oip_pb_grpc
from deployments.protocols.oip.grpc import OipGrpc
from deployments.protocols.wire import ERROR_CODE_METADATA_KEY
from tests.images import jpeg
from tests.transport.live_server import serve_grpc_methods

SMALL = {"max_ongoing_requests": 1, "max_queued_requests": 1}
CAPACITY = 2
#: The refusal's message, the same on every transport (and from Ray's handle).
SLOW_FULL = "model 'slow' is at capacity; retry later"
#: What a refused upload would have sent: 64 chunks of 1 MiB (over the byte limit too).
CHUNKS, CHUNK = 64, b"\xff" * (1 << 20)


class GatedEndpoint:
    """A model whose predictions wait until the test opens :attr:`gate` (polled, so any
    event loop may run it)."""

    def __init__(self, name: str, inner: LocalEndpoint) -> None:
        self.name = name
        self.inner = inner
        self.gate = threading.Event()
        self.waiting = 0

    async def card(self) -> ModelCard:
        return dataclasses.replace(await self.inner.card(), name=self.name)

    async def predict(self, request: PredictRequest) -> Prediction:
        self.waiting += 1
        try:
            while not self.gate.is_set():
                await asyncio.sleep(0.005)
        finally:
            self.waiting -= 1
        return await self.inner.predict(request)

    async def describe(self) -> dict[str, Any]:
        return {**await self.inner.describe(), "name": self.name}

    async def ready(self) -> bool:
        return await self.inner.ready()


class Upload:
    """A streamed body that counts the chunks the server pulled."""

    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.pulled = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        for index in range(CHUNKS):
            self.pulled += 1
            yield self.first if index == 0 and self.first else CHUNK


def config(name: str, source: str, **extra: Any) -> ModelConfig:
    return ModelConfig(name=name, framework="hf_segformer", source=source, **extra)


def gated_service(
    cores: dict[str, ModelCore], only_slow: bool = False
) -> tuple[SegmentationService, GatedEndpoint]:
    """``slow`` (gated, quality 50) with ``tiny`` (the default, quality 10) and
    ``tiny-random`` beside it; or ``slow`` alone."""
    source = cores["tiny"].config.source
    slow = GatedEndpoint("slow", LocalEndpoint(cores["tiny"]))
    endpoints: dict[str, Any] = {"slow": slow}
    configs = [config("slow", source, quality=50.0, **SMALL)]
    if not only_slow:
        for name in ("tiny", "tiny-random"):
            endpoints[name] = LocalEndpoint(cores[name])
            configs.append(cores[name].config)
    gateway = GatewayConfig(
        default_model="slow" if only_slow else "tiny",
        limits=LimitsConfig(max_request_bytes=8 << 20, decode_workers=0),
    )
    pool = DecodePool(0, 16, 10.0)
    return SegmentationService(endpoints, configs, gateway, decode_pool=pool), slow


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a state the test caused (bounded, so a bug fails instead of hanging)."""
    for _ in range(20_000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the expected state never came")


def app_of(service: SegmentationService) -> Any:
    return http.build_app(service, (http.register, oip_http.register, image.register))


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


#: Triton's raw binary request: the body is the one image.
RAW_V2 = {"Inference-Header-Content-Length": "0"}


def refused(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/json"


def test_http_a_full_model_is_refused_before_its_upload_is_read(
    cores: dict[str, ModelCore],
) -> None:
    service, slow = gated_service(cores)
    photo = jpeg(64, 48)

    async def main() -> None:
        async with client_of(app_of(service)) as client:
            filling = [
                asyncio.create_task(client.post("/v1/segment?model=slow", content=photo))
                for _ in range(CAPACITY)
            ]
            await until(lambda: slow.waiting == CAPACITY)
            assert service.admission.info("slow") == {"in_flight": 2, "capacity": 2}

            upload = Upload()
            answer = await client.post(
                "/v1/segment?model=slow",
                content=upload.chunks(),
                headers={"content-type": "image/jpeg"},
            )
            refused(answer)
            assert answer.json()["error"]["code"] == "overloaded"
            assert answer.json()["error"]["message"] == SLOW_FULL
            assert upload.pulled == 0  # not one byte of the upload was read

            # Refused before decoding: a body that is no image is not even looked at.
            refused(await client.post("/v1/segment?model=slow", content=b"no image"))

            upload = Upload()
            v2 = await client.post("/v2/models/slow/infer", content=upload.chunks())
            refused(v2)
            assert v2.json() == {"error": SLOW_FULL, "code": "overloaded"}
            assert upload.pulled == 0

            # Other models are unaffected, the default one (auto, no budget) included.
            for query in ("model=tiny-random", "model=tiny", "model=auto"):
                other = await client.post(f"/v1/segment?{query}", content=photo)
                assert other.status_code == 200, (query, other.text)
            ok = await client.post("/v2/models/tiny/infer", content=photo, headers=RAW_V2)
            assert ok.status_code == 200, ok.text
            # A budget picks the best model with room: slow would win, it is full.
            routed = await client.post("/v1/segment?model=auto&budget_ms=60000", content=photo)
            assert routed.status_code == 200 and routed.json()["model"] == "tiny"
            assert service.admission.in_flight("slow") == 2

            slow.gate.set()
            for done in await asyncio.gather(*filling):
                assert done.status_code == 200 and done.json()["model"] == "slow"
            assert service.admission.in_flight("slow") == 0
            again = await client.post("/v1/segment?model=slow", content=photo)
            assert again.status_code == 200
            ok = await client.post("/v2/models/slow/infer", content=photo, headers=RAW_V2)
            assert ok.status_code == 200, ok.text
        assert {n: service.admission.in_flight(n) for n in service.models} == dict.fromkeys(
            service.models, 0
        )

    asyncio.run(main())


def test_http_budget_routed_and_image_requests_wait_for_routing_unless_all_is_full(
    cores: dict[str, ModelCore],
) -> None:
    """``model=auto`` with a budget (and the IMAGE route, which is that) needs the image's
    size to choose: refused before the body only when no candidate has room."""
    service, slow = gated_service(cores, only_slow=True)
    photo = jpeg(64, 48)

    async def main() -> None:
        async with client_of(app_of(service)) as client:
            filling = [
                asyncio.create_task(client.post("/v1/segment?model=slow", content=photo))
                for _ in range(CAPACITY)
            ]
            await until(lambda: slow.waiting == CAPACITY)
            upload = Upload()
            answer = await client.post(
                "/v1/segment?model=auto&budget_ms=60000",
                content=upload.chunks(),
                headers={"content-type": "image/jpeg"},
            )
            refused(answer)
            assert answer.json()["error"]["code"] == "overloaded" and upload.pulled == 0
            upload = Upload(b'{"request_uuid": "x", ')
            image_answer = await client.post("/preprocessor", content=upload.chunks())
            refused(image_answer)
            assert image_answer.json()["error"]["code"] == "overloaded" and upload.pulled == 0
            slow.gate.set()
            assert [r.status_code for r in await asyncio.gather(*filling)] == [200, 200]
            routed = await client.post("/v1/segment?model=auto&budget_ms=60000", content=photo)
            assert routed.status_code == 200 and routed.json()["model"] == "slow"
        assert service.admission.in_flight("slow") == 0

    asyncio.run(main())


def test_http_errors_cancellations_and_disconnects_give_slots_back(
    cores: dict[str, ModelCore],
) -> None:
    service, slow = gated_service(cores)
    app = app_of(service)
    photo = jpeg(64, 48)

    async def disconnecting_upload() -> list[dict[str, Any]]:
        """The client sends part of a body, then goes away."""
        messages: list[dict[str, Any]] = [
            {"type": "http.request", "body": photo[:100], "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/segment",
            "raw_path": b"/v1/segment", "query_string": b"model=slow", "root_path": "",
            "headers": [(b"host", b"test"), (b"content-type", b"image/jpeg")],
            "server": ("test", 80), "client": ("127.0.0.1", 1),
        }  # fmt: skip
        await app(scope, receive, send)
        return sent

    async def main() -> None:
        async with client_of(app) as client:
            # An error after admission (not an image): 415, and the slot is back.
            bad = await client.post("/v1/segment?model=slow", content=b"no image")
            assert bad.status_code == 415
            assert service.admission.in_flight("slow") == 0

            sent = await disconnecting_upload()
            assert sent[0]["status"] == 400 and b"client_disconnected" in sent[1]["body"]
            assert service.admission.in_flight("slow") == 0

            # A request cancelled while it waits on the model (Ray Serve cancels a
            # request whose client went away).
            waiting = asyncio.create_task(client.post("/v1/segment?model=slow", content=photo))
            await until(lambda: slow.waiting == 1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await until(lambda: slow.waiting == 0)
            assert service.admission.in_flight("slow") == 0

            # Still the whole capacity: two fill it, the third is refused.
            filling = [
                asyncio.create_task(client.post("/v1/segment?model=slow", content=photo))
                for _ in range(CAPACITY)
            ]
            await until(lambda: slow.waiting == CAPACITY)
            refused(await client.post("/v1/segment?model=slow", content=photo))
            described = (await client.get("/v1/models/slow")).json()
            assert described["admission"] == {"in_flight": 2, "capacity": 2}
            slow.gate.set()
            assert [r.status_code for r in await asyncio.gather(*filling)] == [200, 200]
        await service.status.aclose()
        assert service.admission.in_flight("slow") == 0

    asyncio.run(main())


def v2_batch(*images: bytes) -> tuple[bytes, dict[str, str]]:
    """A v2 request of several images (BYTES, Triton's binary extension)."""
    binary = b"".join(len(i).to_bytes(4, "little") + i for i in images)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(binary)},
                }
            ]
        }
    ).encode()
    return header + binary, {"Inference-Header-Content-Length": str(len(header))}


def test_http_a_v2_batch_takes_a_slot_per_image(cores: dict[str, ModelCore]) -> None:
    service, slow = gated_service(cores)
    photo = jpeg(64, 48)

    async def main() -> None:
        async with client_of(app_of(service)) as client:
            # Alone on the model, three images pass a capacity of two (slow, not refused).
            body, headers = v2_batch(photo, photo, photo)
            batch = asyncio.create_task(
                client.post("/v2/models/slow/infer", content=body, headers=headers)
            )
            await until(lambda: slow.waiting == 3)
            assert service.admission.in_flight("slow") == 3
            refused(await client.post("/v1/segment?model=slow", content=photo))
            slow.gate.set()
            answer = await batch
            assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"][0] == 3
            assert service.admission.in_flight("slow") == 0

            # Beside another request, two more images do not fit: all refused, none run.
            slow.gate.clear()
            one = asyncio.create_task(client.post("/v1/segment?model=slow", content=photo))
            await until(lambda: slow.waiting == 1)
            body, headers = v2_batch(photo, photo)
            refused(await client.post("/v2/models/slow/infer", content=body, headers=headers))
            assert service.admission.in_flight("slow") == 1 and slow.waiting == 1
            slow.gate.set()
            assert (await one).status_code == 200
        assert service.admission.in_flight("slow") == 0

    asyncio.run(main())


class _BothGrpc(SegServeGrpc, OipGrpc):
    def __init__(self, service: SegmentationService) -> None:
        self.service = service


@pytest.fixture
def grpc_gated(cores: dict[str, ModelCore]) -> Iterator[tuple[str, SegmentationService, Any]]:
    service, slow = gated_service(cores)
    adders = [
        pb_grpc.add_SegmentationServicer_to_server,
        oip_pb_grpc.add_GRPCInferenceServiceServicer_to_server,
    ]
    with serve_grpc_methods(_BothGrpc(service), adders, on_stop=service.status.aclose) as target:
        yield target, service, slow
    slow.gate.set()


def grpc_status(future: Any) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as info:
        future.result()
    error: Any = info.value
    trailing = {str(key): str(value) for key, value in error.trailing_metadata() or ()}
    return error.code(), trailing.get(ERROR_CODE_METADATA_KEY, ""), error.details()


def test_grpc_a_full_model_is_resource_exhausted_before_decoding(
    grpc_gated: tuple[str, SegmentationService, GatedEndpoint], tiny_segformer_dir: Path
) -> None:
    target, service, slow = grpc_gated
    photo = jpeg(64, 48)
    with grpc.insecure_channel(target) as channel:
        segserve = pb_grpc.SegmentationStub(channel)  # type: ignore[no-untyped-call]
        oip = oip_pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        filling = [
            segserve.Segment.future(pb.SegmentRequest(image=photo, model="slow"), timeout=300)
            for _ in range(CAPACITY)
        ]
        asyncio.run(until(lambda: slow.waiting == CAPACITY))

        junk = pb.SegmentRequest(image=b"no image", model="slow")  # never decoded
        assert grpc_status(segserve.Segment.future(junk, timeout=60)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "overloaded",
            SLOW_FULL,
        )
        infer = oip_pb.ModelInferRequest(model_name="slow")
        infer.inputs.add(name="image", datatype="BYTES", shape=[1])
        infer.raw_input_contents.append(b"\x03\x00\x00\x00abc")
        assert grpc_status(oip.ModelInfer.future(infer, timeout=60)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "overloaded",
            SLOW_FULL,
        )
        other = segserve.Segment(pb.SegmentRequest(image=photo, model="tiny-random"), timeout=60)
        assert other.model == "tiny-random"

        slow.gate.set()
        assert [f.result().model for f in filling] == ["slow", "slow"]
        assert service.admission.in_flight("slow") == 0
        again = segserve.Segment(pb.SegmentRequest(image=photo, model="slow"), timeout=60)
        assert again.model == "slow"
