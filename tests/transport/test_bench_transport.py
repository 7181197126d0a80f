"""``segserve bench`` against the gateway's app and gRPC methods on real sockets (no Ray):
its counts are the model's own, errors are counted by the service's code, the figure is
written. (Against a real Ray Serve and its Prometheus counters: tests/integration.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from clients.cli import main
from deployments.model_core import ModelCore
from tests.images import jpeg
from tests.transport.live_server import demo_app, serve_grpc, serve_http, service_over


@pytest.fixture(scope="module")
def endpoints(cores: dict[str, ModelCore]) -> Iterator[tuple[str, str]]:
    # One service per server: each serves from its own event loop.
    with (
        serve_http(demo_app(service_over(cores))) as url,
        serve_grpc(service_over(cores)) as target,
    ):
        yield url, target


def ran(cores: dict[str, ModelCore]) -> int:
    return sum(int(core.stats["requests"]) for core in cores.values())


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    assert main(["bench", *args, "--json", str(out), "--quiet"]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_closed_and_open_loop_counts_are_the_models_own(
    endpoints: tuple[str, str], cores: dict[str, ModelCore], tmp_path: Path
) -> None:
    url, _ = endpoints
    before = ran(cores)
    figure = tmp_path / "bench.png"
    report = bench(
        tmp_path, "--url", url, "--sizes", "96x64,200x150", "--concurrency", "1,3",
        "--rate", "5", "--requests", "6", "--warmup", "2",
        "--budget", "60000:0.5,none:0.5", "--plot", str(figure),
    )  # fmt: skip
    levels = report["levels"]
    assert [(lv["mode"], lv.get("concurrency"), lv.get("rate")) for lv in levels] == [
        ("closed", 1, None),
        ("closed", 3, None),
        ("open", None, 5.0),
    ]
    assert all(lv["sent"] == lv["ok"] == 6 and lv["errors"] == {} for lv in levels)
    assert report["warmup"] == {"sent": 2, "ok": 2, "errors": []}
    assert ran(cores) - before == 2 + 3 * 6  # every request the tool counted, run once
    for lv in levels:
        assert lv["model_counts"] == {"tiny": 6}
        assert set(lv["chosen_by_share"]) <= {"budget", "default"}
        assert lv["latency_ms"]["p50"] <= lv["latency_ms"]["p99"] <= lv["latency_ms"]["p99.9"]
        assert lv["goodput_rps"] == lv["throughput_rps"]  # a minute's budget: all in time
        timings = lv["server_timings_ms"]["p50"]
        assert set(timings) == {"decode", "queue", "inference", "encode", "total"}
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 600


def test_failed_requests_are_counted_by_the_services_code(
    endpoints: tuple[str, str], cores: dict[str, ModelCore], tmp_path: Path
) -> None:
    url, _ = endpoints
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(80, 60))
    (folder / "b.png").write_bytes(b"not a png at all")
    code = httpx.post(f"{url}/v1/segment", content=b"not a png at all").json()["error"]["code"]
    report = bench(
        tmp_path, "--url", url, "--images", str(folder), "--concurrency", "2",
        "--requests", "8", "--warmup", "0", "--model", "tiny-random",
    )  # fmt: skip
    (level,) = report["levels"]
    assert level["sent"] == 8 and level["ok"] == 4
    assert level["errors"] == {code: 4}
    assert level["model_counts"] == {"tiny-random": 4}
    assert [i["name"] for i in report["images"]] == ["a.jpg", "b.png"]


def test_grpc_counts_are_the_models_own(
    endpoints: tuple[str, str], cores: dict[str, ModelCore], tmp_path: Path
) -> None:
    _, target = endpoints
    before = ran(cores)
    report = bench(
        tmp_path, "--grpc", "--grpc-target", target, "--sizes", "120x90",
        "--concurrency", "2", "--rate", "4", "--requests", "4", "--warmup", "1",
        "--budget", "60000",
    )  # fmt: skip
    assert report["transport"] == "grpc"
    assert [lv["ok"] for lv in report["levels"]] == [4, 4]
    assert ran(cores) - before == 1 + 8
    assert all(lv["attainment_by_budget"] == {"60000": 1.0} for lv in report["levels"])


def test_an_unreachable_server_is_exit_status_3(tmp_path: Path) -> None:
    from tests.transport.live_server import free_port

    argv = ["--url", f"http://127.0.0.1:{free_port()}", "bench", "--requests", "1", "--quiet"]
    assert main(argv) == 3


def test_a_bad_budget_mix_is_a_usage_error(endpoints: tuple[str, str]) -> None:
    assert main(["--url", endpoints[0], "bench", "--budget", "soon", "--quiet"]) == 2
