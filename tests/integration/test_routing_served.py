"""Latency-budget routing with real replicas: tight budgets get the fast model, loose ones
the accurate one, and requests whose time is up are dropped before they run."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import ray

from deployments.pipeline.routing import Candidate, choose
from tests.images import jpeg
from tests.integration.conftest import Served, model_counters

JPEG = {"Content-Type": "image/jpeg"}


def stats(client: httpx.Client, model: str) -> dict[str, Any]:
    """A model's /v1/models entry, with the counters its replica has now."""
    info: dict[str, Any] = client.get(f"/v1/models/{model}").json()
    info["stats"] = model_counters(model)
    return info


def segment(client: httpx.Client, size: int = 64, **params: Any) -> httpx.Response:
    image = jpeg(size, size, seed=3)
    return client.post("/v1/segment", content=image, headers=JPEG, params=params)


def prometheus_value(name: str, model: str) -> float:
    """A segserve metric from Ray's Prometheus endpoint on this node (0 when absent)."""
    port = ray.nodes()[0]["MetricsExportPort"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and re.search(rf'model="{re.escape(model)}"', line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_tight_budgets_get_the_fast_model_and_loose_ones_the_accurate_one(
    client: httpx.Client,
) -> None:
    assert segment(client, model="b0").json()["budget"]["chosen_by"] == "explicit"
    for _ in range(3):  # the gateway learns both models' round trips
        assert segment(client, model="tiny").json()["budget"]["chosen_by"] == "explicit"
    # The choice follows the gateway's own predictions (whatever this machine's speed
    # made them): between the two, only the faster one fits, and it is chosen.
    quality = {"tiny": 10.0, "b0": 37.4}
    for _ in range(3):
        predicted = {
            name: stats(client, name)["routing"]["predicted_ms_512x512"] for name in quality
        }
        tight = sum(predicted.values()) / 2
        expected = choose([Candidate(n, quality[n], predicted[n]) for n in quality], tight, "tiny")
        # At the size the predictions are for (512x512), so they are the ones the gateway uses.
        body = segment(client, 512, model="auto", budget_ms=tight).json()
        assert body["model"] == expected.name, (body["budget"], predicted)
        assert body["budget"]["chosen_by"] == "budget"
    loose = segment(client, model="auto", budget_ms=120_000).json()
    assert loose["model"] == "b0" and loose["budget"]["chosen_by"] == "budget"
    assert loose["budget"]["met"] is True
    plain = segment(client).json()  # no budget: the default model
    assert plain["model"] == "tiny" and plain["budget"]["chosen_by"] == "default"

    info = stats(client, "b0")
    assert info["quality"] == 37.4
    assert info["routing"]["service"]["samples"] >= 1
    assert len(info["warmup"]) == 2


def test_strict_budgets_that_cannot_be_met_are_rejected_without_queueing(
    client: httpx.Client, served: Served
) -> None:
    # Models with one replica: /v1/models shows that replica's own counters.
    names = [m.name for m in served.args.models if m.num_replicas == 1]
    before = {n: stats(client, n)["stats"] for n in names}
    response = segment(client, model="auto", budget_ms=1, strict="true")
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "budget_unreachable" and "strict=true" in error["message"]
    after = {n: stats(client, n)["stats"] for n in names}
    for name in names:
        assert after[name]["requests"] == before[name]["requests"]
        assert after[name]["expired"] == before[name]["expired"]


def test_under_load_expired_requests_are_dropped_before_running(
    client: httpx.Client, served: Served
) -> None:
    single = segment(client, model="b0").json()["timings_ms"]["inference"]
    before = stats(client, "b0")["stats"]
    count = 12
    budget = 1.5 * single  # one batch fits; the ones queued behind it cannot

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=300) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/v1/segment",
                        content=jpeg(64, 64, seed=i),
                        headers=JPEG,
                        params={"model": "b0", "budget_ms": budget},
                    )
                    for i in range(count)
                )
            )

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 504}, codes
    timed_out = [r.json()["error"] for r in responses if r.status_code == 504]
    assert timed_out, codes
    assert all(e["code"] == "deadline_exceeded" for e in timed_out)
    after = stats(client, "b0")["stats"]
    dropped = after["expired"] - before["expired"]
    ran = after["requests"] - before["requests"]
    assert dropped >= 1
    assert ran + dropped <= count  # dropped requests were never run
    # The same count in Prometheus (Ray's metrics agent reports every few seconds).
    deadline = time.time() + 60
    while prometheus_value("ray_segserve_model_expired_total", "b0") < after["expired"]:
        assert time.time() < deadline, "segserve_model_expired never reached Prometheus"
        time.sleep(1)
    assert ran == codes.count(200) + sum(  # every run request answered, late or not
        1
        for e in timed_out
        if "not run" not in e["message"] and "before the model" not in e["message"]
    )
