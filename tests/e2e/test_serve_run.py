"""`serve run serve_config.yaml` as a user runs it (`make serve`), then a client against it.

Uses the shipped config unchanged except for the HTTP port (a free one, so the test
never collides with a service already on :8000). With no network the shipped
model falls back to random weights, which the response must say.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.images import jpeg
from tests.integration.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def serve_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["http_options"]["host"] = "127.0.0.1"
    path = tmp_path_factory.mktemp("e2e") / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).parent / "serve"
    log = (path.parent / "serve.log").open("w")
    process = subprocess.Popen(
        [str(serve_cli), "run", str(path)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        # A fresh local Ray instance, as `make serve` gets on a new machine.
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        start_new_session=True,  # its own process group, killed as a tree below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert process.poll() is None, (path.parent / "serve.log").read_text()[-3000:]
            assert time.time() < deadline, "serve run never became ready"
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # serve run ignores SIGINT in the background
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()


def test_the_readme_curl_answers(serve_run: str) -> None:
    response = httpx.post(
        f"{serve_run}/v1/segment",
        content=jpeg(640, 480),
        headers={"Content-Type": "image/jpeg"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "segformer-b0-ade"
    assert (body["width"], body["height"]) == (640, 480)
    assert (body["mask"]["width"], body["mask"]["height"]) == (640, 480)
    assert body["weights"] == "random" and "random weights" in body["warning"]
    ade = {"wall", "building", "sky", "floor", "tree", "person", "car", "flag", "clock"}
    models = httpx.get(f"{serve_run}/v1/models", timeout=30).json()["models"]
    assert set(models[0]["labels"]) >= ade and len(models[0]["labels"]) == 150
    assert all(row["name"] in models[0]["labels"] for row in body["classes"])


def shipped_model(url: str, framework: str) -> dict[str, Any]:
    """The one model of a framework in the shipped config, as /v1/models lists it."""
    models = httpx.get(f"{url}/v1/models", timeout=30).json()["models"]
    matching = [m for m in models if m["framework"] == framework]
    assert len(matching) == 1, [m["name"] for m in models]
    return dict(matching[0])


def segment_classes(url: str, model: str) -> dict[str, Any]:
    """A 600x400 JPEG segmented by ``model`` (classes only); asserts a 200."""
    response = httpx.post(
        f"{url}/v1/segment",
        content=jpeg(600, 400),
        params={"model": model, "outputs": "classes"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_the_shipped_mmseg_model_answers(serve_run: str) -> None:
    mmseg = shipped_model(serve_run, "mmseg")
    assert mmseg["weights"] == "random"  # offline: zoo URL unreachable
    body = segment_classes(serve_run, mmseg["name"])
    assert body["processed"] == {"width": 768, "height": 512}  # the config's 2048x512 keep-ratio
    assert body["classes"] and "random weights" in body["warning"]


def test_the_shipped_paddleseg_model_answers(serve_run: str) -> None:
    paddle = shipped_model(serve_run, "paddleseg")
    # Offline: the model zoo's .pdparams URL is unreachable, so `auto` falls back to random.
    assert paddle["weights"] == "random"
    assert len(paddle["labels"]) == 19 and paddle["labels"][0] == "road"
    body = segment_classes(serve_run, paddle["name"])
    assert body["processed"] == {"width": 1024, "height": 512}  # Resize to 1024x512
    assert body["classes"] and "random weights" in body["warning"]


def test_a_budget_visibly_switches_models(serve_run: str) -> None:
    def segment(**params: Any) -> dict[str, Any]:
        response = httpx.post(
            f"{serve_run}/v1/segment",
            content=jpeg(320, 240),
            params={"outputs": "classes", **params},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    # Each model timed through the gateway a few times: the warm-up batches ran while
    # every replica was starting on the same 2 cores, so alone they predict slow.
    for name in ["segformer-b2-ade"] + ["segformer-b0-ade"] * 6:
        assert segment(model=name)["budget"]["chosen_by"] == "explicit"

    def utilization() -> float:
        described = httpx.get(f"{serve_run}/v1/models", timeout=30).json()["models"]
        return float(max(m["routing"].get("utilization", 0.0) for m in described))

    # The shipped config shares 2 cores between the models (shared_compute): while they
    # were just busy, budgets get the fastest fitting model. Once idle, the best one.
    deadline = time.time() + 60
    while utilization() > 0.5:
        assert time.time() < deadline, "the models never went idle"
        time.sleep(1)
    loose = segment(model="auto", budget_ms=120_000)
    assert loose["model"] == "segformer-b2-ade" and loose["budget"]["chosen_by"] == "budget"
    described = httpx.get(f"{serve_run}/v1/models", timeout=30).json()["models"]
    b2_fit = next(m for m in described if m["name"] == "segformer-b2-ade")["routing"]["service"]
    # Under b2's fitted mean service time alone, b2 cannot fit whatever this machine's
    # speed: a cheaper model answers (by budget when one is predicted to fit).
    tight = 0.9 * (b2_fit["fixed_ms"] + b2_fit["ms_per_megapixel"] * 512 * 512 / 1e6)
    chosen = segment(model="auto", budget_ms=tight)
    assert chosen["model"] != "segformer-b2-ade", (
        chosen["budget"],
        {m["name"]: m["routing"] for m in described},
    )
    assert chosen["budget"]["chosen_by"] in ("budget", "fastest")
    if chosen["budget"]["chosen_by"] == "budget":
        assert chosen["budget"]["predicted_ms"] <= tight
    models = httpx.get(f"{serve_run}/v1/models", timeout=30).json()["models"]
    assert {m["name"]: m["quality"] for m in models}["segformer-b2-ade"] == 46.5
