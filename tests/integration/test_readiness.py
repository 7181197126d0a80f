"""Readiness follows the model replicas: a replica that dies is reloaded by Ray Serve,
/readyz says 503 until it has, and the service answers again afterwards."""

from __future__ import annotations

import time

import httpx
import ray

from tests.images import jpeg
from tests.integration.conftest import Served


def test_readyz_is_503_while_a_model_replica_reloads(served: Served) -> None:
    replicas = [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "model_b0" in actor["name"] and "REPLICA" in actor["name"]
    ]
    assert len(replicas) == 1, replicas
    with httpx.Client(base_url=served.url, timeout=60) as client:
        assert client.get("/readyz").status_code == 200
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]))
        statuses = []
        deadline = time.time() + 90
        while time.time() < deadline:
            response = client.get("/readyz")
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert "b0" in response.json()["error"]["message"]
                assert response.headers["retry-after"] == "1"
            if statuses[-1] == 200 and 503 in statuses:
                break
            time.sleep(0.1)
        assert 503 in statuses and statuses[-1] == 200, statuses[-20:]
        # The other model kept serving throughout, and b0 serves again.
        assert client.post("/v1/segment", content=jpeg(64, 64)).status_code == 200
        again = client.post("/v1/segment", content=jpeg(64, 64), params={"model": "b0"})
        assert again.status_code == 200, again.text
