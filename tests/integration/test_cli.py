"""The ``segserve`` console script, run as a subprocess like a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.images import jpeg
from tests.integration.conftest import Served, free_port

SEGSERVE = str(Path(sys.executable).parent / "segserve")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SEGSERVE, *args], capture_output=True, text=True, timeout=300)


def test_segment_images_over_http_and_grpc(served: Served, tmp_path: Path) -> None:
    images = []
    for i, size in enumerate([(120, 80), (300, 200), (64, 64)]):
        path = tmp_path / f"photo{i}.jpg"
        path.write_bytes(jpeg(*size, seed=i))
        images.append(str(path))
    http = run("--url", served.url, "segment", *images, "--out-dir", str(tmp_path / "h"), "--json")
    assert http.returncode == 0, http.stderr
    records = [json.loads(line) for line in http.stdout.splitlines()]
    assert [r["image"] for r in records] == images
    assert records[1]["width"] == 300 and records[1]["classes"]
    grpc_target = ["--grpc", "--grpc-target", served.grpc_target]
    grpc = run("segment", *images, *grpc_target, "--out-dir", str(tmp_path / "g"))
    assert grpc.returncode == 0, grpc.stderr
    assert "photo1.jpg: 300x200, model tiny (pretrained weights)" in grpc.stdout
    assert "%" in grpc.stdout  # the class table
    for name in ("photo0", "photo1", "photo2"):
        over_http = np.asarray(Image.open(tmp_path / "h" / f"{name}.labels.png"))
        over_grpc = np.asarray(Image.open(tmp_path / "g" / f"{name}.labels.png"))
        assert np.array_equal(over_http, over_grpc)


def test_a_bad_image_fails_with_exit_1_and_a_message(served: Served, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jpg", tmp_path / "notes.jpg"
    good.write_bytes(jpeg(100, 100))
    bad.write_text("shopping list: milk, eggs")
    for transport in (["--url", served.url], ["--grpc", "--grpc-target", served.grpc_target]):
        result = run(*transport, "segment", str(good), str(bad))
        assert result.returncode == 1
        assert f"{bad}: unsupported_image:" in result.stderr
        assert "good.jpg: 100x100" in result.stdout  # the good one still went through
        assert "Traceback" not in result.stderr


def test_an_unreachable_server_is_exit_3(tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    image.write_bytes(jpeg(50, 50))
    port = free_port()
    nowhere = (["--url", f"http://127.0.0.1:{port}"], ["--grpc-target", f"127.0.0.1:{port}"])
    for transport in (nowhere[0], [*nowhere[1], "--grpc"]):
        result = run(*transport, "--timeout", "5", "segment", str(image))
        assert result.returncode == 3, result.stderr
        assert "cannot reach" in result.stderr and "Traceback" not in result.stderr


def test_models_command(served: Served) -> None:
    result = run("--url", served.url, "models")
    assert result.returncode == 0, result.stderr
    assert "* tiny  hf_segformer  pretrained weights  150 classes" in result.stdout
    assert "b0  hf_segformer  random weights" in result.stdout
    listing = json.loads(
        run("--grpc-target", served.grpc_target, "models", "--grpc", "--json").stdout
    )
    assert listing["default"] == "tiny"
