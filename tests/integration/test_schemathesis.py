"""Schemathesis against the served OpenAPI document (a real Ray Serve): a few hundred
generated requests, none answered with a server error."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis

from tests.integration.conftest import Served
from tests.transport.hardening_fixtures import fuzz_operations

#: Cases per operation: a few hundred in all over the app's operations.
EXAMPLES = 40


@pytest.mark.timeout(900)  # a guard against a hang; the run takes a minute or two
def test_no_generated_request_is_a_server_error(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    with httpx.Client(base_url=served.url, timeout=120) as client:

        def send(case: Any) -> httpx.Response:
            kwargs = case.as_transport_kwargs(base_url=served.url)
            kwargs.pop("cookies", None)  # the API reads none
            if isinstance(kwargs.get("data"), bytes | str):
                kwargs["content"] = kwargs.pop("data")
            return client.request(**kwargs)

        sent = fuzz_operations(schema, EXAMPLES, send)
    assert sum(sent.values()) >= 200, sent
