"""The try-it page as the gateway serves it: ``GET /`` and its files, offline and same-origin."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from deployments.model_core import ModelCore
from deployments.protocols import demo
from tests.transport.live_server import demo_app, service_over


@pytest.fixture(scope="module")
def client(cores: dict[str, ModelCore]) -> Iterator[TestClient]:
    with TestClient(demo_app(service_over(cores)), raise_server_exceptions=False) as c:
        yield c


def test_the_page_is_served_at_the_root_and_at_demo(client: TestClient) -> None:
    for path in ("/", "/demo"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "<title>segserve" in response.text
        assert "script-src 'self'" in response.headers["content-security-policy"]


def test_every_file_the_page_names_is_served_with_its_type(client: TestClient) -> None:
    page = client.get("/").text
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sorted(referenced) == ["static/app.css", "static/app.js"]
    types = {"app.css": "text/css", "app.js": "text/javascript"}
    for path in referenced:
        response = client.get("/" + path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(types[path.rsplit("/", 1)[1]])
        assert response.headers["x-content-type-options"] == "nosniff"


def test_the_page_needs_no_other_origin(client: TestClient) -> None:
    """No CDN, no font service: every URL in the page's files is relative."""
    for name in demo.FILES:
        body = client.get(f"/static/{name}").text
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", body), name


def test_the_script_calls_only_routes_the_app_serves(client: TestClient) -> None:
    script = client.get("/static/app.js").text
    called = set(re.findall(r'["`](v1/[a-z/]+)', script))
    assert called == {"v1/models", "v1/segment"}
    assert client.get("/v1/models").status_code == 200


@pytest.mark.parametrize("name", ["../demo.py", "__init__.py", "secrets.txt", "app.js.map"])
def test_nothing_but_the_pages_files_is_served(client: TestClient, name: str) -> None:
    response = client.get(f"/static/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_api_still_answers_beside_the_page(client: TestClient) -> None:
    from tests.images import jpeg

    response = client.post(
        "/v1/segment", content=jpeg(64, 48), headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200
    assert response.json()["model"] == "tiny"
