"""One real local Ray Serve for the integration tests (session-scoped)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from deployments.adapters.device import plan_device
from deployments.adapters.hf_segformer import HFSegformerAdapter
from deployments.app import build_app
from deployments.config import (
    AppArgs,
    LimitsConfig,
    ModelConfig,
    deployment_name,
    parse_args,
    ray_grpc_environment,
)

#: How often the gateway refreshes /v1/models in the integration config.
STATUS_REFRESH_S = 0.5


def model_counters(model: str, app: str = "segserve") -> dict[str, Any]:
    """A one-replica model's counters, read from its replica through a Ray handle.

    /v1/models shows them as of the gateway's last background refresh, which can lag a
    loaded machine by more than any fixed wait; the replica's own answer cannot.
    """
    handle = serve.get_deployment_handle(deployment_name(model), app_name=app)
    info: dict[str, Any] = handle.describe.remote().result(timeout_s=60)
    stats: dict[str, Any] = info["stats"]
    return stats


#: Room for the 30 MB PNG test, small enough that the 413 test stays quick.
MAX_REQUEST_BYTES = 40 * 1024 * 1024
GRPC_SERVICER = "deployments.protocols.segserve_pb2_grpc.add_SegmentationServicer_to_server"
OIP_GRPC_SERVICER = (
    "deployments.protocols.oip.open_inference_grpc_pb2_grpc"
    ".add_GRPCInferenceServiceServicer_to_server"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    grpc_target: str
    args: AppArgs
    tiny_dir: Path
    paddle_params: Path | None = None


MMSEG_CONFIG = "segformer_mit-b0_8xb2-160k_ade20k-512x512"
MMSEG_OPTIONS = {"test_pipeline.1.scale": [1024, 256]}


def save_mmseg_checkpoint(directory: Path) -> Path | None:
    """Random MiT-B0 weights saved with mmengine's save_checkpoint (None without mmseg)."""
    try:
        from mmengine.runner import save_checkpoint

        from deployments.adapters.mmseg import MMSegAdapter
    except ImportError:
        return None
    config = ModelConfig(
        name="x", framework="mmseg", source=MMSEG_CONFIG, weights="random", seed=3,
        config_options=MMSEG_OPTIONS,
    )  # fmt: skip
    adapter = MMSegAdapter.load(config, plan_device(0, 1, None))
    path = directory / "mit-b0-random.pth"
    meta = {"dataset_meta": {"classes": tuple(adapter.labels), "palette": adapter.palette}}
    save_checkpoint({"state_dict": adapter.model.state_dict(), "meta": meta}, str(path))
    return path


def save_paddle_params(directory: Path) -> Path | None:
    """Random PP-LiteSeg parameters written with paddle.save (None without paddleseg)."""
    try:
        from tests.paddle_models import save_pdparams
    except ImportError:
        return None
    return save_pdparams(directory / "ppliteseg.pdparams", seed=11)


def paddle_model(pdparams: Path) -> dict[str, object]:
    from tests.paddle_models import PPLITESEG_OPTIONS

    return {
        # PaddleSeg: a model class and its arguments + a .pdparams file. Two replicas
        # of one CPU each: each must run one Paddle thread, not one per core.
        "name": "paddle-pp",
        "framework": "paddleseg",
        "source": "PPLiteSeg",
        "checkpoint": str(pdparams),
        "weights": "pretrained",
        "config_options": PPLITESEG_OPTIONS,
        "num_replicas": 2,
        "num_cpus": 1,
    }


def integration_args(
    tiny_dir: Path, mmseg_checkpoint: Path | None = None, paddle_params: Path | None = None
) -> AppArgs:
    return parse_args(
        {
            "gateway": {
                "default_model": "tiny",
                "num_cpus": 0.5,
                "limits": {"max_request_bytes": MAX_REQUEST_BYTES},
                # /v1/models and /readyz answer from a background refresh: keep it short
                # so tests see a model's state change soon after it happens.
                "status": {"refresh_s": STATUS_REFRESH_S},
            },
            "models": [
                {
                    "name": "tiny",
                    "framework": "hf_segformer",
                    "source": str(tiny_dir),
                    "weights": "pretrained",
                    "quality": 10.0,  # fast and poor: what tight budgets get
                    "num_cpus": 1,
                    "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
                },
                *(
                    [
                        {
                            # MMSegmentation: a shipped config by name + a checkpoint file.
                            "name": "mmseg-b0",
                            "framework": "mmseg",
                            "source": MMSEG_CONFIG,
                            "checkpoint": str(mmseg_checkpoint),
                            "weights": "pretrained",
                            "config_options": MMSEG_OPTIONS,
                            "num_cpus": 1,
                        }
                    ]
                    if mmseg_checkpoint
                    else []
                ),
                *([paddle_model(paddle_params)] if paddle_params else []),
                {
                    # The shipped model's hub id: offline here, so `auto` falls back to random.
                    "name": "b0",
                    "framework": "hf_segformer",
                    "source": "nvidia/segformer-b0-finetuned-ade-512-512",
                    "weights": "auto",
                    "quality": 37.4,  # slower, better: what loose budgets get
                    "num_cpus": 1,
                },
            ],
        }
    )


@pytest.fixture(scope="session")
def served(tiny_segformer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    mmseg_checkpoint = save_mmseg_checkpoint(tmp_path_factory.mktemp("mmseg"))
    paddle_params = save_paddle_params(tmp_path_factory.mktemp("paddle"))
    # Ray's gRPC proxy refuses messages above the request limit (read when it starts).
    os.environ.update(ray_grpc_environment(LimitsConfig(max_request_bytes=MAX_REQUEST_BYTES)))
    # Logical CPUs: more than this machine's cores so every model gets its own replica.
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    port, grpc_port = free_port(), free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        grpc_options={
            "port": grpc_port,
            "grpc_servicer_functions": [GRPC_SERVICER, OIP_GRPC_SERVICER],
        },
    )
    args = integration_args(tiny_segformer_dir, mmseg_checkpoint, paddle_params)
    serve.run(build_app(args), name="segserve", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
        assert time.time() < deadline, "service never became ready"
        time.sleep(0.5)
    try:
        yield Served(
            url=url,
            grpc_target=f"127.0.0.1:{grpc_port}",
            args=args,
            tiny_dir=tiny_segformer_dir,
            paddle_params=paddle_params,
        )
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_adapter(tiny_segformer_dir: Path) -> HFSegformerAdapter:
    """The same model in-process, to compute what the service must answer."""
    config = integration_args(tiny_segformer_dir).models[0]
    return HFSegformerAdapter.load(config, plan_device(0, 1, None))


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=120) as http:
        yield http
