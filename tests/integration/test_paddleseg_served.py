"""PaddleSeg replicas served beside PyTorch ones: parity, listing, threads, concurrency."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from ray import serve

from clients.grpc_client import CHANNEL_OPTIONS
from deployments.config import LimitsConfig, deployment_name
from deployments.pipeline.imaging import decode_image
from deployments.protocols import segserve_pb2 as pb
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from deployments.protocols.wire import decode_label_png
from tests.images import encode, jpeg, scene
from tests.integration.conftest import Served

pytest.importorskip("paddleseg", reason="the paddle extra is not installed")

MODEL = "paddle-pp"


def mask_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return decode_label_png(base64.b64decode(response.json()["mask"]["data"]))


def replica_snapshots(app: str = "segserve") -> dict[str, dict[str, Any]]:
    """describe() of every replica of the Paddle model, by replica id."""
    handle = serve.get_deployment_handle(deployment_name(MODEL), app_name=app)
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(60):
        info = handle.describe.remote().result(timeout_s=60)
        seen[info["replica"]] = info
        if len(seen) == 2:
            break
    assert len(seen) == 2, "expected two Paddle replicas"
    return seen


def test_paddle_model_serves_paddleseg_inference_over_http_and_grpc(
    served: Served, client: httpx.Client
) -> None:
    import paddle
    from paddleseg.core import infer

    from tests.paddle_models import load, ppliteseg_config

    image = scene(300, 200, seed=21)
    data = encode(image, "PNG")
    response = client.post("/v1/segment", content=data, params={"model": MODEL})
    body = response.json()
    assert body["model"] == MODEL and body["weights"] == "pretrained"
    assert body["processed"] == {"width": 192, "height": 128}  # keep-ratio 256x128
    served_mask = mask_of(response)

    # PaddleSeg's own inference of the same parameters on the same tensor.
    reference = load(ppliteseg_config(checkpoint=str(served.paddle_params), weights="pretrained"))
    pixels = decode_image(data, reference.input_spec, LimitsConfig().image_limits()).pixels
    batch = paddle.to_tensor(reference.preprocess([pixels]))
    pred, _ = infer.inference(reference.model, batch, trans_info=[("resize", (200, 300))])
    assert np.array_equal(served_mask, pred.numpy()[0, 0])
    assert len(np.unique(served_mask)) > 3

    with grpc.insecure_channel(served.grpc_target, options=CHANNEL_OPTIONS) as channel:
        reply = pb_grpc.SegmentationStub(channel).Segment(
            pb.SegmentRequest(image=data, model=MODEL), timeout=120
        )
    assert reply.model == MODEL
    assert np.array_equal(decode_label_png(reply.mask_png), served_mask)


def test_models_lists_the_paddle_model(client: httpx.Client) -> None:
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed[MODEL]["framework"] == "paddleseg"
    info = client.get(f"/v1/models/{MODEL}").json()
    assert info["framework"] == "paddleseg" and info["runtime"] == "dygraph"
    assert info["weights"] == "pretrained" and info["checkpoint"].endswith("ppliteseg.pdparams")
    assert len(info["labels"]) == 19 and info["labels"][0] == "road"
    assert info["device"] == {
        "kind": "cpu",
        "cpu_threads": 1,
        "fallback_reason": None,
        "cpu_affinity": None,  # not pinned: the config gives no cpu_affinity
        "cpu_note": None,
    }


def test_paddle_and_torch_replicas_serve_at_once_without_oversubscription(
    served: Served, client: httpx.Client
) -> None:
    before = replica_snapshots()
    # Paddle alone, one request at a time: each batch must keep to its one thread.
    for seed in range(6):
        mask_of(
            client.post("/v1/segment", content=jpeg(320, 240, seed=seed), params={"model": MODEL})
        )
    after = replica_snapshots()
    ran = 0
    for replica, info in after.items():
        busy = info["stats"]["busy_s"] - before[replica]["stats"]["busy_s"]
        cpu = info["stats"]["cpu_s"] - before[replica]["stats"]["cpu_s"]
        assert info["device"]["cpu_threads"] == 1
        if busy > 0:
            ran += 1
            # One Paddle thread uses ~1.0 CPU-second per second; two would use ~2.0.
            assert cpu / busy < 1.4, f"replica {replica} used {cpu / busy:.2f} cores"
    assert ran >= 1

    # Both kinds at once: Paddle replicas and PyTorch replicas, none crashes.
    torch_models = [m.name for m in served.args.models if m.framework != "paddleseg"]
    jobs = [(MODEL, seed) for seed in range(12)] + [
        (name, seed) for name in torch_models for seed in range(4)
    ]

    def send(job: tuple[str, int]) -> tuple[str, int]:
        name, seed = job
        with httpx.Client(base_url=served.url, timeout=300) as http:
            reply = http.post(
                "/v1/segment", content=jpeg(320, 240, seed=seed), params={"model": name}
            )
        return reply.json().get("model", ""), reply.status_code

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    assert results == [(name, 200) for name, _ in jobs], results

    # Paddle and PyTorch never share a process; the service still answers.
    for info in replica_snapshots().values():
        assert info["frameworks_loaded"] == ["paddle"]
    for name in torch_models:
        assert "paddle" not in client.get(f"/v1/models/{name}").json()["frameworks_loaded"]
    assert client.get("/readyz").status_code == 200
