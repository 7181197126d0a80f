"""The layering rules of DESIGN.md, checked on the code as it is imported.

Each check imports the modules in a fresh interpreter and looks at what came
with them, so a lazy import elsewhere in the suite cannot hide a dependency.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 400


def imported_with(*modules: str) -> set[str]:
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_model_replicas_never_load_the_router_or_the_pipeline() -> None:
    loaded = imported_with("deployments.model_server", "deployments.model_core")
    assert "deployments.contract" in loaded
    forbidden = {
        "deployments.pipeline.service",
        "deployments.pipeline.routing",
        "deployments.pipeline.latency",
        "deployments.gateway",
    }
    assert not forbidden & loaded, forbidden & loaded


def test_clients_import_only_the_wire_package_and_the_stubs() -> None:
    loaded = imported_with("clients.http", "clients.grpc_client", "clients.cli", "clients.result")
    server = {m for m in loaded if m.startswith("deployments")}
    allowed = {
        "deployments",
        "deployments.protocols",
        "deployments.protocols.wire",
        "deployments.protocols.wire.proto",
        "deployments.protocols.segserve_pb2",
        "deployments.protocols.segserve_pb2_grpc",
    }
    assert server <= allowed, server - allowed
    assert "deployments.protocols.wire" in server


def test_the_pipeline_runs_without_ray() -> None:
    # The model core and its batcher too: LocalEndpoint is how GPU checks run without Ray.
    loaded = imported_with(
        "deployments.pipeline.service", "deployments.model_core", "deployments.batching"
    )
    assert "deployments.batching" in loaded
    assert not {m for m in loaded if m == "ray" or m.startswith("ray.")}


@pytest.mark.parametrize("package", ["deployments", "clients"])
def test_no_module_is_over_400_lines(package: str) -> None:
    long = {
        str(path.relative_to(REPO)): lines
        for path in (REPO / package).rglob("*.py")
        if "_pb2" not in path.name and (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
