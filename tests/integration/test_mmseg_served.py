"""An MMSegmentation model served beside the HuggingFace ones, over HTTP and gRPC."""

from __future__ import annotations

import base64

import grpc
import httpx
import numpy as np
import pytest

from clients.grpc_client import CHANNEL_OPTIONS
from deployments.protocols import segserve_pb2 as pb
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from deployments.protocols.wire import decode_label_png
from tests.images import jpeg
from tests.integration.conftest import Served

pytest.importorskip("mmseg", reason="the mmseg extra is not installed")


def test_mmseg_model_end_to_end_over_http_and_grpc(served: Served, client: httpx.Client) -> None:
    data = jpeg(400, 300, seed=4)
    response = client.post("/v1/segment", content=data, params={"model": "mmseg-b0"})
    assert response.status_code == 200, response.text
    body = response.json()
    # Served from the checkpoint the fixture saved with mmengine's save_checkpoint.
    assert body["model"] == "mmseg-b0" and body["weights"] == "pretrained"
    assert body["processed"] == {"width": 341, "height": 256}  # keep-ratio 1024x256 scale
    mask = decode_label_png(base64.b64decode(body["mask"]["data"]))
    assert mask.shape == (300, 400)
    with grpc.insecure_channel(served.grpc_target, options=CHANNEL_OPTIONS) as channel:
        reply = pb_grpc.SegmentationStub(channel).Segment(
            pb.SegmentRequest(image=data, model="mmseg-b0"), timeout=120
        )
    assert np.array_equal(decode_label_png(reply.mask_png), mask)
    info = client.get("/v1/models/mmseg-b0").json()
    assert info["framework"] == "mmseg" and info["config"].startswith("segformer_mit-b0")
    assert info["checkpoint"].endswith("mit-b0-random.pth")
    assert len(info["labels"]) == 150 and info["labels"][0] == "wall"
    listed = {m["name"]: m["framework"] for m in client.get("/v1/models").json()["models"]}
    assert listed["mmseg-b0"] == "mmseg" and listed["tiny"] == "hf_segformer"
