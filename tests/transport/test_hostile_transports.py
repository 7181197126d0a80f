"""Every hostile upload class through HTTP (raw and multipart) and gRPC: the documented
status and error code, and a good request answered right after it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from clients.grpc_client import GrpcSegServeClient
from clients.result import SegServeClientError
from deployments.pipeline.errors import ErrorKind
from tests.hostile_images import CASES, HostileCase
from tests.images import encode, jpeg, scene
from tests.transport import hardening_fixtures as hf

hostile_services, hostile_http, hostile_grpc = hf.hostile_services, hf.hostile_http, hf.hostile_grpc

# The 100 MP decodes take seconds and hundreds of MB each: raw HTTP only (the unit tests
# bound their memory); every other class goes through all three transports.
LIGHT = [c for c in CASES if not c.heavy]
GRPC_CODE = {kind.http_status: kind.grpc_code_name for kind in ErrorKind}
JPEG = {"Content-Type": "image/jpeg"}
#: A good upload every service accepts (PNG is in each case's formats).
GOOD = encode(scene(32, 24), "PNG")


def _check_http(response: Any, case: HostileCase) -> None:
    assert response.status_code == case.status, (case.name, response.text[:300])
    body = response.json()
    if case.status == 200:
        assert (body["width"], body["height"]) == case.size
    else:
        assert body["error"]["code"] == case.code, (case.name, body)


def _good_request_after(client: Any) -> None:
    after = client.post("/v1/segment", content=GOOD, headers={"Content-Type": "image/png"})
    assert after.status_code == 200, after.text


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_raw_body(hostile_http: Any, case: HostileCase) -> None:
    client = hostile_http[case.formats]
    response = client.post(
        "/v1/segment", content=case.make(), headers={"Content-Type": "application/octet-stream"}
    )
    _check_http(response, case)
    _good_request_after(client)


@pytest.mark.parametrize("case", LIGHT, ids=lambda c: c.name)
def test_multipart_file(hostile_http: Any, case: HostileCase) -> None:
    client = hostile_http[case.formats]
    response = client.post("/v1/segment", files={"image": ("upload.bin", case.make())})
    _check_http(response, case)
    _good_request_after(client)


@pytest.mark.parametrize("case", LIGHT, ids=lambda c: c.name)
def test_grpc(hostile_grpc: Any, case: HostileCase) -> None:
    with GrpcSegServeClient(hostile_grpc[case.formats], timeout=120) as client:
        if case.status == 200:
            result = client.segment(case.make())
            assert (result.width, result.height) == case.size
        else:
            with pytest.raises(SegServeClientError) as raised:
                client.segment(case.make())
            assert raised.value.code == case.code, (case.name, raised.value)
            assert raised.value.status == GRPC_CODE[case.status]
        assert client.segment(GOOD).width == 32


def test_a_huge_model_name_is_a_short_not_found(hostile_http: Any, hostile_grpc: Any) -> None:
    name = "x" * 100_000
    response = hostile_http[
        None
    ].post(  # URLs of clients and proxies stop near 8 kB
        "/v1/segment",
        params={"model": name[:8000]},
        content=jpeg(8, 8),
        headers={"Content-Type": "image/jpeg"},
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_model"
    assert len(response.text) < 1000
    with (
        GrpcSegServeClient(hostile_grpc[None]) as client,
        pytest.raises(SegServeClientError) as raised,
    ):
        client.segment(jpeg(8, 8), model=name)
    assert (raised.value.status, raised.value.code) == ("NOT_FOUND", "unknown_model")
    assert len(str(raised.value)) < 1000
    for odd in ("tiny%0A", "%C3%A9" * 10, "." * 70):
        listed = hostile_http[None].get(f"/v1/models/{odd}")
        assert listed.status_code == 404 and listed.json()["error"]["code"] == "unknown_model"


def test_grpc_status_names_are_grpc_codes() -> None:
    assert set(GRPC_CODE.values()) <= set(grpc.StatusCode.__members__)
