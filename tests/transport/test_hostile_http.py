"""HTTP-level abuse: limits judged from the headers before the body, a body deadline,
multipart text fields, probes that never wait on a model, and load errors kept out of
responses."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from deployments.config import StatusConfig
from deployments.contract import ModelCard, Prediction, PredictRequest
from deployments.model_core import LocalEndpoint, ModelCore
from deployments.protocols import http
from tests.hostile_images import jpeg_fill_bytes, png_many_empty_chunks
from tests.images import encode, jpeg, scene
from tests.transport import hardening_fixtures as hf

hostile_services, hostile_http = hf.hostile_services, hf.hostile_http
#: Guards against a hang; never a measure of speed.
GUARD_S = 30.0
SECRET = "cannot reach huggingface.co from gw-7.internal: /home/ops/.cache/secret-path"


def _exchange(base_url: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send ``head`` and ``body`` on a raw socket, then read the answer (the body may be
    short of its Content-Length: the server must answer without the rest)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=GUARD_S) as sock:
        sock.sendall(head + body)
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload)


def _complete(received: bytes) -> bool:
    headers, _, body = received.partition(b"\r\n\r\n")
    for line in headers.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _head(content_type: str, length: int) -> bytes:
    return (
        f"POST /v1/segment HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.fixture(scope="module")
def socket_url(cores: dict[str, ModelCore]) -> Any:
    service = hf.make_service(cores, hf.hardened_config(body_timeout_s=1.0))
    with hf.serve_http(service) as url:
        yield url


def test_a_body_that_never_arrives_gets_408(socket_url: str) -> None:
    status, body = _exchange(socket_url, _head("image/jpeg", 100_000), b"\xff\xd8\xff")
    assert status == 408 and body["error"]["code"] == "body_timeout"


def test_the_content_type_is_judged_before_the_body(socket_url: str) -> None:
    # 50 MB announced, none sent: the answer cannot have waited for it.
    status, body = _exchange(socket_url, _head("text/html", 50_000_000))
    assert status == 415 and body["error"]["code"] == "unsupported_image"


def test_the_content_length_is_judged_before_the_body(socket_url: str) -> None:
    status, body = _exchange(socket_url, _head("image/png", hf.HOSTILE_REQUEST_BYTES + 1))
    assert status == 413 and body["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"\x00junk, not an image." * 200, "image/jpeg", 415, "unsupported_image"),
        (jpeg_fill_bytes()[: 80 * 1024], "image/jpeg", 400, "jpeg_fill_bytes"),
        (png_many_empty_chunks()[:8192], "image/png", 400, "png_too_many_chunks_before_idat"),
    ],
    ids=["junk", "jpeg_fill_bytes", "png_many_empty_chunks"],
)
def test_a_body_is_refused_by_its_first_bytes_without_the_rest(
    socket_url: str, body: bytes, content_type: str, status: int, code: str
) -> None:
    # 8 MB announced, the first few KB sent: the answer is the refusal, not the 408 that
    # waiting for the rest would end in.
    answer = _exchange(socket_url, _head(content_type, hf.HOSTILE_REQUEST_BYTES), body)
    assert answer[0] == status and answer[1]["error"]["code"] == code


def test_a_good_image_arriving_in_small_pieces_is_served(socket_url: str) -> None:
    data = jpeg(40, 30)
    host, port = socket_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=GUARD_S) as sock:
        sock.sendall(_head("image/jpeg", len(data)))
        for piece in (data[:5], data[5:11], data[11:20]):  # the magic split across sends
            sock.sendall(piece)
            time.sleep(0.05)
        sock.sendall(data[20:])
        received = b""
        while not _complete(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    assert json.loads(received.partition(b"\r\n\r\n")[2])["width"] == 40


def test_a_good_request_after_the_abuse(socket_url: str) -> None:
    data = jpeg(40, 30)
    status, body = _exchange(socket_url, _head("image/jpeg", len(data)), data)
    assert status == 200 and body["width"] == 40


def _text_field_form(value: bytes, charset: str | None = None) -> tuple[bytes, dict[str, str]]:
    body = b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\n' + value + b"\r\n--b--\r\n"
    content_type = "multipart/form-data; boundary=b" + (f"; charset={charset}" if charset else "")
    return body, {"Content-Type": content_type}


@pytest.mark.parametrize(
    ("value", "charset"),
    [("ünïcødé ☃ 画像".encode(), None), ("画像 ☃".encode("utf-16"), "utf-16")],
    ids=["non_latin1_utf8", "utf16_charset"],
)
def test_multipart_text_fields_are_400(
    hostile_http: Any, value: bytes, charset: str | None
) -> None:
    body, headers = _text_field_form(value, charset)
    response = hostile_http[None].post("/v1/segment", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "multipart_text_field"


def test_malformed_multipart_is_400_not_500(hostile_http: Any) -> None:
    for body, content_type in (
        (b"--b\r\nno headers at all", "multipart/form-data; boundary=b"),
        (b"anything", "multipart/form-data"),  # no boundary
        (
            b"--b\r\n" + b"Content-Disposition: form-data; name=image\r\n" * 5000,
            "multipart/form-data; boundary=b",
        ),
    ):
        response = hostile_http[None].post(
            "/v1/segment", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 400, (content_type, response.text)


class StuckEndpoint:
    """A model whose replicas are busy: every call through its queue waits forever."""

    def __init__(self, inner: LocalEndpoint) -> None:
        self.inner = inner
        self.calls = 0

    async def card(self) -> ModelCard:
        return await self.inner.card()

    async def predict(self, request: PredictRequest) -> Prediction:
        return await self.inner.predict(request)

    async def describe(self) -> dict[str, Any]:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def ready(self) -> bool:
        return True  # Serve says it has a RUNNING replica


class LeakyEndpoint(LocalEndpoint):
    """A ``weights: auto`` model whose replica fell back to random weights, with a load
    error full of host names and paths."""

    def __init__(self, core: ModelCore, note: str) -> None:
        super().__init__(core)
        self.note = note

    async def card(self) -> ModelCard:
        return replace(await super().card(), weights="random", weights_note=self.note)

    async def predict(self, request: PredictRequest) -> Prediction:
        return replace(await super().predict(request), weights="random", weights_note=self.note)

    async def describe(self) -> dict[str, Any]:
        return {**await super().describe(), "weights": "random", "weights_note": self.note}


def test_probes_never_wait_on_a_busy_model(cores: dict[str, ModelCore]) -> None:
    stuck = StuckEndpoint(LocalEndpoint(cores["tiny"]))
    config = hf.hardened_config(status=StatusConfig(refresh_s=60, probe_timeout_s=0.5))
    service = hf.make_service(cores, config, {"tiny": stuck})
    with TestClient(http.build_app(service), raise_server_exceptions=False) as client:
        for _ in range(20):
            assert client.get("/readyz").status_code == 200
            listed = client.get("/v1/models").json()["models"][0]
            assert listed["ready"] is True and listed["name"] == "tiny"
    # One refresh asked the model once; the 40 probes asked it nothing.
    assert stuck.calls == 1


@pytest.mark.parametrize("expose", [False, True])
def test_load_errors_stay_in_the_logs(
    cores: dict[str, ModelCore], caplog: pytest.LogCaptureFixture, expose: bool
) -> None:
    secret = f"{SECRET} ({expose})"  # each is logged once per process
    leaky = LeakyEndpoint(cores["tiny"], secret)
    config = hf.hardened_config(status=StatusConfig(expose_load_errors=expose))
    service = hf.make_service(cores, config, {"tiny": leaky})
    with TestClient(http.build_app(service), raise_server_exceptions=False) as client:
        answer = client.post(
            "/v1/segment",
            content=encode(scene(16, 16), "PNG"),
            headers={"Content-Type": "image/png"},
        )
        listed = client.get("/v1/models/tiny").json()
    assert answer.status_code == 200
    assert (
        answer.json()["weights"] == "random"
        and "pretrained_unreachable" in answer.json()["warning"]
    )
    assert "secret-path" not in answer.text
    assert listed["weights_reason"] == "pretrained_unreachable"
    assert ("weights_note" in listed) is expose and (secret in json.dumps(listed)) is expose
    assert secret in caplog.text


def test_configured_random_weights_say_so(hostile_http: Any) -> None:
    client = hostile_http[None]
    answer = client.post(
        "/v1/segment",
        params={"model": "tiny-random"},
        content=jpeg(16, 16),
        headers={"Content-Type": "image/jpeg"},
    ).json()
    assert answer["weights"] == "random" and "configured_random" in answer["warning"]
    by_name = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert by_name["tiny-random"]["weights_reason"] == "configured_random"
    assert by_name["tiny"]["weights_reason"] is None and "weights_note" not in by_name["tiny"]
