"""The Open Inference Protocol through a real Ray Serve: tritonclient, unmodified, over the
HTTP proxy (binary tensors) and the gRPC proxy (``ModelInfer`` dispatched by method name to
the gateway's :class:`OipGrpc` base). ``labels`` is ``/v1``'s label map on every pixel and
mistakes come back as client errors through Ray's own error paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deployments.protocols.wire import SegmentResult
from tests.images import encode, jpeg, scene
from tests.integration.conftest import Served
from tests.transport.v2_fixtures import run_client

WIDTH, HEIGHT = 120, 90


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("v2-served")
    first, second = folder / "scene.png", folder / "other.jpg"
    first.write_bytes(encode(scene(WIDTH, HEIGHT, seed=31), "PNG"))
    second.write_bytes(jpeg(100, 70, seed=32))
    return first, second


def ok(cases: dict[str, Any], name: str) -> Any:
    assert cases[name]["ok"], f"{name}: {cases[name]['error']}"
    return cases[name]["value"]


def client_status(cases: dict[str, Any], name: str) -> str:
    assert not cases[name]["ok"], f"{name} should fail: {cases[name]['value']}"
    return str(cases[name]["error"]["status"]).removeprefix("StatusCode.")


@pytest.mark.parametrize("script", ["triton_http.py", "triton_grpc.py"])
def test_tritonclient_through_ray_serve(
    script: str, served: Served, client: httpx.Client, images: tuple[Path, Path], tmp_path: Path
) -> None:
    answer = client.post("/v1/segment", params={"model": "tiny"}, content=images[0].read_bytes())
    expected = SegmentResult.from_json(answer.json()).labels
    assert expected is not None
    target = served.grpc_target if script == "triton_grpc.py" else served.url
    cases = run_client(
        script,
        target.removeprefix("http://"),
        tmp_path,
        image=images[0],
        image2=images[1],
        model="tiny",
    )
    assert ok(cases, "server_live") is True and ok(cases, "server_ready") is True
    assert ok(cases, "model_ready") is True
    for case, count in (("infer_bytes_1", 1), ("infer_bytes_2", 2), ("infer_uint8", 1)):
        summary = ok(cases, case)
        labels = np.load(summary["outputs"]["labels"]["path"])
        assert labels.shape == (count, HEIGHT, WIDTH), case
        for index in range(count):
            np.testing.assert_array_equal(labels[index], expected, err_msg=case)
        assert summary["model_version"] == "1" and summary["parameters"]["weights"] == "pretrained"
    assert ok(cases, "request_id")["id"] == "req-42"
    assert ok(cases, "timeout")["parameters"]["budget_ms"] == 30000
    for case in ("err_corrupt", "err_datatype", "err_unknown_input", "err_binary_size"):
        assert client_status(cases, case) in {"400", "415", "INVALID_ARGUMENT"}, case
    assert client_status(cases, "err_unknown_model") in {"404", "NOT_FOUND"}
    assert client_status(cases, "version_2") in {"404", "NOT_FOUND"}
