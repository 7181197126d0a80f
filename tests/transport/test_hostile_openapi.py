"""Schemathesis over the app's own OpenAPI document, in-process: whatever it generates
(query values, bodies of every declared media type) gets an answer that is not a 5xx.

A short run for the fast tier; tests/integration/test_schemathesis.py runs a few
hundred cases against a real Ray Serve.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi.testclient import TestClient

from deployments.model_core import ModelCore
from deployments.protocols import http
from tests.transport import hardening_fixtures as hf


def _send(client: TestClient, case: Any) -> Any:
    """A schemathesis case (requests-style keywords) sent with the httpx TestClient."""
    kwargs = case.as_transport_kwargs(base_url="")
    cookies = kwargs.pop("cookies", None)
    if cookies:
        kwargs.setdefault("headers", {})["Cookie"] = "; ".join(
            f"{k}={v}" for k, v in cookies.items()
        )
    if isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")
    return client.request(**kwargs)


def test_no_generated_request_is_a_server_error(cores: dict[str, ModelCore]) -> None:
    app = http.build_app(hf.make_service(cores, hf.hardened_config()))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    with TestClient(app, raise_server_exceptions=False) as client:
        sent = hf.fuzz_operations(
            schema,
            examples=12,
            call=lambda case: _send(client, case),
        )
    assert "POST /v1/segment" in sent and all(sent.values()), sent
