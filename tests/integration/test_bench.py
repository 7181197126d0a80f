"""``segserve bench`` against a real Ray Serve: what it counts is what the model servers
counted (Ray's Prometheus counters ``segserve_model_requests`` and ``_expired``), on a
short closed-loop and a short open-loop run, and the figure is written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from clients.cli import main
from tests.integration.conftest import Served, model_counters
from tests.integration.test_routing_served import prometheus_value

REQUESTS = "ray_segserve_model_requests_total"
EXPIRED = "ray_segserve_model_expired_total"


def counters(model: str) -> dict[str, float]:
    return {"ran": prometheus_value(REQUESTS, model), "expired": prometheus_value(EXPIRED, model)}


def model_stats(served: Served, model: str) -> dict[str, int]:
    return model_counters(model)


def settled(served: Served, model: str) -> tuple[dict[str, int], dict[str, float]]:
    """The model's own counts and Prometheus's, once Ray's metrics agent (it reports every
    few seconds) has caught up with them; the last ones seen after 60 s otherwise."""
    deadline = time.time() + 60
    while True:
        stats, seen = model_stats(served, model), counters(model)
        own = {"ran": stats["requests"], "expired": stats["expired"]}
        if seen == own or time.time() > deadline:
            return own, seen
        time.sleep(1)


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    assert main(["bench", *args, "--json", str(out), "--quiet"]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_closed_loop_counts_match_the_servers_counters(served: Served, tmp_path: Path) -> None:
    before, _ = settled(served, "tiny")
    figure = tmp_path / "closed.png"
    report = bench(
        tmp_path, "--url", served.url, "--model", "tiny", "--sizes", "96x64,160x120",
        "--concurrency", "1,4", "--requests", "8", "--warmup", "2",
        "--budget", "60000:0.5,none:0.5", "--plot", str(figure),
    )  # fmt: skip
    sent = report["warmup"]["sent"] + sum(lv["sent"] for lv in report["levels"])
    assert [lv["ok"] for lv in report["levels"]] == [8, 8] and sent == 18
    # The replica's own counts, and Prometheus's once reported, grew by what was sent.
    after, prometheus = settled(served, "tiny")
    assert prometheus == after
    assert {k: after[k] - before[k] for k in after} == {"ran": sent, "expired": 0}
    with Image.open(figure) as image:
        assert image.format == "PNG"


def test_open_loop_counts_match_the_servers_counters(served: Served, tmp_path: Path) -> None:
    # A budget of about one batch of b0: requests queued behind it may expire unrun.
    single = httpx.post(
        f"{served.url}/v1/segment", content=_jpeg(), params={"model": "b0"}, timeout=120
    ).json()["timings_ms"]["inference"]
    before, _ = settled(served, "b0")
    report = bench(
        tmp_path, "--url", served.url, "--model", "b0", "--sizes", "64x64",
        "--rate", "20", "--requests", "12", "--warmup", "0",
        "--budget", f"{1.5 * single:.0f}:1", "--plot", str(tmp_path / "open.png"),
    )  # fmt: skip
    (level,) = report["levels"]
    assert level["sent"] == 12
    assert set(level["errors"]) <= {"deadline_exceeded"}, level["errors"]
    late_or_dropped = level["errors"].get("deadline_exceeded", 0)
    assert level["ok"] + late_or_dropped == 12
    after, prometheus = settled(served, "b0")
    assert prometheus == after
    ran, expired = after["ran"] - before["ran"], after["expired"] - before["expired"]
    # Every answer was run; a 504 was run and late, dropped unrun by the model, or
    # refused by the gateway before it reached a model.
    assert level["ok"] <= ran <= level["ok"] + late_or_dropped
    assert expired <= late_or_dropped and ran + expired <= 12
    assert (tmp_path / "open.png").stat().st_size > 0


def test_grpc_closed_loop_counts_match(served: Served, tmp_path: Path) -> None:
    before, _ = settled(served, "tiny")
    report = bench(
        tmp_path, "--grpc", "--grpc-target", served.grpc_target, "--model", "tiny",
        "--sizes", "96x64", "--concurrency", "2", "--requests", "6", "--warmup", "1",
    )  # fmt: skip
    assert report["levels"][0]["ok"] == 6
    after, prometheus = settled(served, "tiny")
    assert prometheus == after
    assert {k: after[k] - before[k] for k in after} == {"ran": 7, "expired": 0}


def _jpeg() -> bytes:
    from tests.images import jpeg

    return jpeg(64, 64, seed=3)
