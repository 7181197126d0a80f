"""The real v2 clients, unmodified, against segserve served for real (uvicorn + grpc.aio).

Each client family (tritonclient HTTP and gRPC, KServe's InferenceRESTClient and
InferenceGRPCClient) runs its script from ``.venv-clients`` in a subprocess, as a user's
program would; the script reports what every call returned or raised. ``labels`` must be
``/v1``'s label map for the same image, on every pixel. Skipped without ``.venv-clients``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deployments.protocols.wire import SegmentResult
from tests.images import encode, jpeg, scene
from tests.transport.v2_fixtures import (  # noqa: F401  (the *_fixture imports)
    NOT_READY_MODEL,
    Served,
    run_client,
    served_v2_broken_fixture,
    served_v2_fixture,
)

SCRIPTS = ("triton_http.py", "triton_grpc.py", "kserve_rest.py", "kserve_grpc.py")
WIDTH, HEIGHT = 96, 64


def target(script: str, targets: Served) -> str:
    if script.endswith("_grpc.py"):
        return targets.grpc
    return f"http://{targets.http}" if script.startswith("kserve") else targets.http


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A PNG (its decoded pixels are exactly what UINT8 clients send) and a JPEG of
    another size."""
    folder = tmp_path_factory.mktemp("v2-images")
    first, second = folder / "scene.png", folder / "other.jpg"
    first.write_bytes(encode(scene(WIDTH, HEIGHT, seed=5), "PNG"))
    second.write_bytes(jpeg(80, 60, seed=6))
    return first, second


@pytest.fixture(scope="module")
def v1_labels(served_v2: Served, images: tuple[Path, Path]) -> np.ndarray:
    response = httpx.post(
        f"http://{served_v2.http}/v1/segment",
        params={"model": "tiny"},
        content=images[0].read_bytes(),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    labels = SegmentResult.from_json(response.json()).labels
    assert labels is not None
    return labels


@pytest.fixture(scope="module", params=SCRIPTS)
def report(
    request: pytest.FixtureRequest,
    served_v2: Served,
    images: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, dict[str, Any]]:
    script: str = request.param
    out = tmp_path_factory.mktemp(script.removesuffix(".py"))
    cases = run_client(
        script, target(script, served_v2), out, image=images[0], image2=images[1], model="tiny"
    )
    return script, cases


def value(cases: dict[str, Any], name: str) -> Any:
    case = cases[name]
    assert case["ok"], f"{name}: {case['error']}"
    return case["value"]


def client_error(cases: dict[str, Any], name: str) -> str:
    """The error a case got: must be a client error (4xx or a client gRPC code), never 5xx."""
    case = cases[name]
    assert not case["ok"], f"{name} should have failed: {case['value']}"
    status = str(case["error"]["status"]).removeprefix("StatusCode.")
    assert status in {"400", "404", "413", "415", "INVALID_ARGUMENT", "NOT_FOUND"}, case["error"]
    return status


def false_or_client_error(cases: dict[str, Any], name: str) -> None:
    if cases[name]["ok"]:
        assert cases[name]["value"] is False, cases[name]
    else:
        client_error(cases, name)


def test_health_readiness_and_metadata(report: tuple[str, dict[str, Any]]) -> None:
    script, cases = report
    assert value(cases, "server_live") is True
    assert value(cases, "server_ready") is True
    assert value(cases, "model_ready") is True
    false_or_client_error(cases, "model_ready_unknown")
    if script.startswith("triton"):
        assert value(cases, "model_ready_version_1") is True
        false_or_client_error(cases, "model_ready_version_2")
        assert "binary_tensor_data" in value(cases, "server_metadata")["extensions"]
        metadata = value(cases, "model_metadata")
        assert (metadata["name"], metadata["versions"]) == ("tiny", ["1"])
        assert [t["name"] for t in metadata["inputs"]] == ["image"]
        assert [t["name"] for t in metadata["outputs"]] == ["labels", "classes", "mask_png"]
        assert client_error(cases, "model_metadata_unknown") in {"404", "NOT_FOUND"}


def labels_of(summary: dict[str, Any]) -> np.ndarray:
    labels: np.ndarray = np.load(summary["outputs"]["labels"]["path"])
    return labels


def test_every_image_of_a_batch_is_v1s_label_map(
    report: tuple[str, dict[str, Any]], v1_labels: np.ndarray
) -> None:
    script, cases = report
    shapes = {"infer_bytes_1": 1, "infer_bytes_2x1": 2, "infer_bytes_2": 2, "infer_uint8": 1}
    shapes["infer_uint8_json"] = 1
    if script == "triton_grpc.py":  # its client has no JSON tensors
        del shapes["infer_uint8_json"]
    for case, count in shapes.items():
        summary = value(cases, case)
        labels = labels_of(summary)
        assert labels.shape == (count, HEIGHT, WIDTH) and labels.dtype == np.uint8, case
        for index in range(count):  # 100 % of pixels
            np.testing.assert_array_equal(labels[index], v1_labels, err_msg=case)
        tables = summary["outputs"]["classes"]["tables"]
        assert len(tables) == count
        assert all(sum(row["pixels"] for row in table) == WIDTH * HEIGHT for table in tables)
        assert summary["outputs"]["mask_png"]["sizes"] == [[WIDTH, HEIGHT]] * count
        assert summary["model_name"] == "tiny"
        assert summary["parameters"]["weights"] == "pretrained"
        assert summary["parameters"]["chosen_by"] == "explicit"


def test_json_binary_and_mixed_outputs(
    report: tuple[str, dict[str, Any]], v1_labels: np.ndarray
) -> None:
    script, cases = report
    if script == "triton_http.py":
        assert value(cases, "outputs_json")["binary"] == dict.fromkeys(
            ("labels", "classes", "mask_png"), False
        )
        assert value(cases, "outputs_binary")["binary"] == dict.fromkeys(
            ("labels", "classes", "mask_png"), True
        )
        assert value(cases, "outputs_mixed")["binary"] == {"labels": True, "classes": False}
        for case in ("outputs_json", "outputs_binary", "outputs_mixed"):
            np.testing.assert_array_equal(labels_of(value(cases, case))[0], v1_labels)
    elif script == "triton_grpc.py":
        summary = value(cases, "outputs_some")
        assert list(summary["outputs"]) == ["classes", "labels"]
        np.testing.assert_array_equal(labels_of(summary)[0], v1_labels)
    else:
        assert list(value(cases, "outputs_binary")["outputs"]) == ["labels", "classes"]
        mixed = value(cases, "outputs_mixed")
        assert list(mixed["outputs"]) == ["labels", "mask_png"]
        np.testing.assert_array_equal(labels_of(mixed)[0], v1_labels)
    mixed_sizes = value(cases, "mixed_sizes_no_labels")
    assert mixed_sizes["outputs"]["mask_png"]["sizes"] == [[WIDTH, HEIGHT], [80, 60]]


def test_compression_version_request_id_and_parameters(
    report: tuple[str, dict[str, Any]], v1_labels: np.ndarray
) -> None:
    script, cases = report
    if script.startswith("triton"):
        for algorithm in ("gzip", "deflate"):
            np.testing.assert_array_equal(
                labels_of(value(cases, f"compress_{algorithm}"))[0], v1_labels
            )
        assert value(cases, "version_1")["model_version"] == "1"
        assert client_error(cases, "version_2") in {"404", "NOT_FOUND"}
        timeout = value(cases, "timeout")["parameters"]
        assert timeout["budget_ms"] == 30000 and timeout["budget_met"] is True
    elif script == "kserve_grpc.py":
        assert value(cases, "version_1")["model_version"] == "1"
        assert client_error(cases, "version_2") == "NOT_FOUND"
    assert value(cases, "request_id")["id"] == "req-42"
    parameters = value(cases, "parameters")["parameters"]
    assert parameters["budget_ms"] == 30000 and parameters["budget_met"] is True


def test_mistakes_are_client_errors(report: tuple[str, dict[str, Any]]) -> None:
    script, cases = report
    names = ["err_datatype", "err_unknown_input", "err_binary_size", "err_unknown_output"]
    for name in names:
        assert client_error(cases, name) in {"400", "INVALID_ARGUMENT"}, name
    assert client_error(cases, "err_corrupt") in {"400", "415", "INVALID_ARGUMENT"}
    assert client_error(cases, "err_unknown_model") in {"404", "NOT_FOUND"}
    if script.startswith("triton"):
        assert client_error(cases, "err_mixed_sizes_labels") in {"400", "INVALID_ARGUMENT"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_readiness_false_when_a_model_is_down(
    script: str,
    served_v2_broken: Served,
    images: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    cases = run_client(
        script,
        target(script, served_v2_broken),
        tmp_path,
        image=images[0],
        model="tiny",
        not_ready_model=NOT_READY_MODEL,
        health_only=True,
    )
    if cases["server_ready"]["ok"]:
        assert cases["server_ready"]["value"] is False
    else:  # KServe's REST client raises on the 503
        assert cases["server_ready"]["error"]["status"] == 503
    assert value(cases, "model_ready_not_ready") is False
    assert value(cases, "model_ready") is True
