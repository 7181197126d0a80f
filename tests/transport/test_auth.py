"""API keys: with keys configured every route but /healthz and every gRPC method needs
one; clients and the CLI pass with it; keys never show up in logs or reprs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

from clients import cli
from clients.grpc_client import GrpcSegServeClient
from clients.http import SegServeClient
from clients.result import SegServeClientError
from deployments.config import AuthConfig, ConfigError, GatewayConfig
from deployments.pipeline.service import SegmentationService
from deployments.protocols import http
from deployments.protocols import segserve_pb2 as pb
from deployments.protocols import segserve_pb2_grpc as pb_grpc
from tests.images import jpeg
from tests.transport import hardening_fixtures as hf

keyed_service = hf.keyed_service
KEY, OTHER_KEY = hf.KEY, hf.OTHER_KEY
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def keyed_http(keyed_service: SegmentationService) -> Any:
    with TestClient(http.build_app(keyed_service), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def keyed_grpc(keyed_service: SegmentationService) -> Any:
    with hf.serve_grpc(keyed_service) as target:
        yield target


def _routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, from the app itself."""
    app = client.app
    found = []
    for route in app.routes:  # type: ignore[attr-defined]
        path = getattr(route, "path", None)
        for method in sorted(getattr(route, "methods", None) or ()):
            if path and method != "HEAD":
                found.append((method, path.replace("{name}", "tiny")))
    return found


def test_every_route_but_healthz_needs_a_key(keyed_http: TestClient) -> None:
    routes = _routes(keyed_http)
    assert ("POST", "/v1/segment") in routes and ("GET", "/openapi.json") in routes
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"X-API-Key": "nope"}):
            response = keyed_http.request(method, path, headers={**headers, **JPEG})
            if path == "/healthz":
                assert response.status_code == 200
                continue
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["code"] == "unauthenticated"
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_key_opens_every_route(keyed_http: TestClient) -> None:
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": OTHER_KEY}):
        segmented = keyed_http.post(
            "/v1/segment", content=jpeg(16, 16), headers={**headers, **JPEG}
        )
        assert segmented.status_code == 200, segmented.text
        assert keyed_http.get("/v1/models", headers=headers).status_code == 200
        assert keyed_http.get("/readyz", headers=headers).status_code == 200


def test_keys_are_never_logged_or_shown(
    keyed_http: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keyed_http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}x"})
    keyed_http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    config = GatewayConfig(auth=AuthConfig(api_keys=[KEY]))
    assert KEY not in caplog.text and KEY not in repr(config) and KEY not in str(config)


def test_grpc_methods_need_the_authorization_metadata(keyed_grpc: str) -> None:
    with grpc.insecure_channel(keyed_grpc) as channel:
        stub = pb_grpc.SegmentationStub(channel)
        calls = [
            (stub.Segment, pb.SegmentRequest(image=jpeg(8, 8))),
            (stub.ListModels, pb.ListModelsRequest()),
        ]
        for method, request in calls:
            for metadata in ((), (("authorization", "Bearer wrong-key-123"),)):
                with pytest.raises(grpc.RpcError) as raised:
                    method(request, metadata=metadata, timeout=60)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            method(request, metadata=(("authorization", f"Bearer {KEY}"),), timeout=60)


def test_clients_pass_with_a_key_or_the_environment(
    keyed_grpc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with GrpcSegServeClient(keyed_grpc, api_key=KEY) as client:
        assert client.segment(jpeg(16, 16)).width == 16
    monkeypatch.setenv("SEGSERVE_API_KEY", OTHER_KEY)
    with GrpcSegServeClient(keyed_grpc) as client:
        assert client.models()["default"] == "tiny"
    monkeypatch.delenv("SEGSERVE_API_KEY")
    with GrpcSegServeClient(keyed_grpc) as client, pytest.raises(SegServeClientError) as raised:
        client.models()
    assert raised.value.code == "unauthenticated"


def test_http_client_and_cli_take_the_key(
    keyed_service: SegmentationService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    with hf.serve_http(keyed_service) as url:
        with SegServeClient(url, api_key=KEY) as client:
            assert client.segment(jpeg(16, 16)).width == 16
        with SegServeClient(url) as client, pytest.raises(SegServeClientError) as raised:
            client.models()
        assert (raised.value.code, raised.value.status) == ("unauthenticated", 401)
        assert cli.main(["--url", url, "models", "--api-key", KEY]) == 0
        assert "tiny" in capsys.readouterr().out
        image = tmp_path / "photo.jpg"
        image.write_bytes(jpeg(24, 16))
        monkeypatch.setenv("SEGSERVE_API_KEY", KEY)
        assert cli.main(["--url", url, "segment", str(image)]) == 0
        monkeypatch.setenv("SEGSERVE_API_KEY", "not-a-valid-key")
        assert cli.main(["--url", url, "models"]) != 0


def test_keys_from_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated monthly\n{KEY}\n\n{OTHER_KEY}\n")
    auth = AuthConfig(api_keys_file=str(path), api_keys_env="MY_KEYS")
    assert auth.load_keys({"MY_KEYS": "env-key-000001, env-key-000002"}) == (
        KEY, OTHER_KEY, "env-key-000001", "env-key-000002",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="MY_KEYS"):
        auth.load_keys({})
    with pytest.raises(ConfigError, match="cannot be read"):
        AuthConfig(api_keys_file=str(tmp_path / "missing")).load_keys({})
    with pytest.raises(ValueError, match="at least 8"):
        AuthConfig(api_keys=["short"])


def test_without_keys_everything_is_open() -> None:
    assert not AuthConfig().configured and AuthConfig().load_keys({}) == ()
