"""The README's examples, run as a user runs them.

The cluster path of "Running on a cluster" as a Ray user follows it on one machine
(token authentication, ``ray start --head``, ``serve deploy`` of the shipped config,
``serve status``, a request, then an edited config deployed again in place while
requests keep coming), and against that cluster the quickstart ``curl``, the Python
client block and the ``segserve`` command block. Commands come from the README's own
fenced blocks, so the docs cannot drift from what works; only ports (free ones) and
host names are substituted, and Ray's files (session, token) live in a private HOME.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.images import jpeg
from tests.integration.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent


def section(heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match, f"README has no section {heading!r}"
    return match.group(1)


def blocks(heading: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section(heading), re.M | re.S)


def commands(block: str) -> list[str]:
    """The block's command lines, without comments."""
    lines = (line.split("  #")[0].split(" # ")[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass
class Cluster:
    env: dict[str, str]
    dashboard: str
    url: str
    grpc_target: str
    config: Path
    work: Path
    log: list[str] = field(default_factory=list)

    def run(self, command: str, timeout: float = 300) -> str:
        done = subprocess.run(
            command, shell=True, cwd=REPO, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        output = done.stdout + done.stderr
        self.log.append(f"$ {command}\n{output[-2000:]}")
        assert done.returncode == 0, f"{command!r} failed:\n{output[-3000:]}"
        return output


def wait_ready(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(2)
    raise AssertionError(f"{url} never became ready")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("readme")
    ray_port, dashboard_port, http_port, grpc_port = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    # Ray keeps its token in ~/.ray and records the cluster under RAY_TMPDIR: private here.
    env.update(HOME=str(home), RAY_TMPDIR=str(home), PATH=f"{BIN}:{env.get('PATH', '')}")
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"].update(port=http_port, host="127.0.0.1")
    config["grpc_options"]["port"] = grpc_port
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    served = Cluster(
        env, f"http://127.0.0.1:{dashboard_port}", f"http://127.0.0.1:{http_port}",
        f"127.0.0.1:{grpc_port}", config_path, work,
    )  # fmt: skip
    (cluster_block,) = blocks("Running on a cluster", "bash")[:1]
    try:
        for command in commands(cluster_block):
            if command.startswith("export "):
                key, value = command.removeprefix("export ").split("=", 1)
                env[key] = value
            elif "<head-ip>" in command and command.startswith("ray start"):
                continue  # a worker node: this machine is the only node
            elif command.startswith("ray start --head"):
                served.run(
                    command.replace("--port=6379", f"--port={ray_port}")
                    + f" --dashboard-port={dashboard_port} --disable-usage-stats"
                )
            elif command.startswith("serve deploy"):
                # The README names the GPU file "or serve_config.yaml": this machine has no GPU.
                served.run(f"serve deploy -a {served.dashboard} {config_path}")
                wait_ready(served.url, 900)
            elif command.startswith("serve status"):
                assert "segserve" in served.run(f"serve status -a {served.dashboard}")
            elif command.startswith("curl"):
                target = command.split()[-1].replace("<any-node>:8000", served.url)
                models = httpx.get(target, timeout=30).json()["models"]
                assert {m["name"] for m in models} == {
                    m["name"] for m in config["applications"][0]["args"]["models"]
                }
            else:
                served.run(command)
        yield served
    finally:
        subprocess.run("ray stop --force", shell=True, env=env, capture_output=True, timeout=120)


def test_the_cluster_path_answers_and_knows_its_token(cluster: Cluster) -> None:
    assert (Path(cluster.env["HOME"]) / ".ray" / "auth_token").exists()
    assert cluster.env["RAY_AUTH_MODE"] == "token"
    response = httpx.post(
        f"{cluster.url}/v1/segment", content=jpeg(320, 240),
        headers={"Content-Type": "image/jpeg"}, timeout=120,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["weights"] == "random"  # no network here: announced as such


def test_the_quickstart_curl(cluster: Cluster) -> None:
    (curl,) = [c for c in commands(blocks("Quickstart", "bash")[1]) if c.startswith("curl")]
    (cluster.work / "photo.jpg").write_bytes(jpeg(640, 480))
    command = curl.replace("localhost:8000", cluster.url)
    done = subprocess.run(
        shlex.split(command), cwd=cluster.work, capture_output=True, timeout=120, check=True
    )
    body = yaml.safe_load(done.stdout)  # JSON is YAML
    assert (body["width"], body["height"]) == (640, 480) and body["classes"]


def test_the_python_client_block(cluster: Cluster) -> None:
    (block,) = blocks("Python clients and the `segserve` command", "python")
    (cluster.work / "photo.jpg").write_bytes(jpeg(400, 300))
    code = block.replace("http://localhost:8000", cluster.url)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cluster.work, env=cluster.env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (cluster.work / "photo.labels.png").exists()


def test_the_segserve_command_block(cluster: Cluster) -> None:
    (block,) = blocks("Python clients and the `segserve` command", "bash")
    (cluster.work / "photo.jpg").write_bytes(jpeg(400, 300))
    (cluster.work / "more").mkdir(exist_ok=True)
    (cluster.work / "more" / "b.jpg").write_bytes(jpeg(200, 100, seed=2))
    for command in commands(block):
        target = f"--grpc-target {cluster.grpc_target}" if "--grpc" in command else ""
        line = f"{command} --url {cluster.url} {target}"
        done = subprocess.run(
            line, shell=True, cwd=cluster.work, env=cluster.env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{line}: {done.stderr[-2000:]}"
    assert (cluster.work / "masks" / "b.labels.png").exists()


def test_an_edited_config_deploys_in_place_while_requests_keep_coming(cluster: Cluster) -> None:
    """`serve deploy` again with an edited file updates the running application; every
    request sent meanwhile is answered."""
    statuses: list[int] = []
    answers: list[str] = []  # status and error body of each answer, for the failure message
    stop = threading.Event()
    image = jpeg(160, 120)

    def load() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                response = client.post(
                    f"{cluster.url}/v1/segment", content=image,
                    headers={"Content-Type": "image/jpeg"},
                )  # fmt: skip
                code = "" if response.status_code == 200 else response.text[:200]
                statuses.append(response.status_code)
                answers.append(f"{response.status_code} {code}".strip())

    config = yaml.safe_load(cluster.config.read_text())
    limit = 1024 * 1024
    config["applications"][0]["args"]["gateway"]["limits"]["max_request_bytes"] = limit
    edited = cluster.work / "edited.yaml"
    edited.write_text(yaml.safe_dump(config))
    big = b"\xff\xd8" + b"\x00" * (limit + 10)
    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    try:
        time.sleep(2)
        cluster.run(f"serve deploy -a {cluster.dashboard} {edited}")
        deadline = time.monotonic() + 600
        while True:  # the new gateway answers with the new limit
            code = httpx.post(
                f"{cluster.url}/v1/segment", content=big, timeout=60,
                headers={"Content-Type": "image/jpeg"},
            ).status_code  # fmt: skip
            if code == 413:
                break
            assert time.monotonic() < deadline, "the edited config never took effect"
            time.sleep(1)
        time.sleep(3)
    finally:
        stop.set()
        sender.join(180)
    assert len(statuses) >= 3
    assert set(statuses) == {200}, answers
