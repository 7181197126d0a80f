"""Scale-out configuration: autoscaling keys, the GPU serve config and the RayService."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.config import ConfigError, load_serve_config, parse_args, replica_options

REPO = Path(__file__).resolve().parents[2]


def minimal(**model: object) -> dict[str, Any]:
    return {"models": [{"name": "m", "framework": "hf_segformer", "source": "x", **model}]}


def test_autoscaling_config_is_passed_to_ray_instead_of_num_replicas() -> None:
    args = parse_args(
        {
            **minimal(autoscaling_config={"min_replicas": 1, "max_replicas": 4}),
            "gateway": {"autoscaling_config": {"max_replicas": 3, "target_ongoing_requests": 8}},
        }
    )
    model = args.models[0]
    options = replica_options(model.num_replicas, model.autoscaling_config)
    assert "num_replicas" not in options
    auto = options["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (1, 4)
    assert "initial_replicas" not in auto  # None is left to Ray (min_replicas)
    assert replica_options(2, None) == {"num_replicas": 2}
    gateway = args.gateway
    assert (
        replica_options(gateway.num_replicas, gateway.autoscaling_config)["autoscaling_config"][
            "target_ongoing_requests"
        ]
        == 8
    )


def test_every_autoscaling_key_is_one_ray_serve_accepts() -> None:
    from ray.serve.config import AutoscalingConfig

    ours = parse_args(
        minimal(
            autoscaling_config={
                "min_replicas": 0,
                "max_replicas": 5,
                "initial_replicas": 2,
                "target_ongoing_requests": 3,
                "upscale_delay_s": 1,
                "downscale_delay_s": 2,
                "look_back_period_s": 12,
                "metrics_interval_s": 10,
            }
        )
    ).models[0]
    assert ours.autoscaling_config is not None
    theirs = AutoscalingConfig(**ours.autoscaling_config.ray_options())
    assert (theirs.min_replicas, theirs.max_replicas, theirs.initial_replicas) == (0, 5, 2)
    assert theirs.target_ongoing_requests == 3 and theirs.downscale_delay_s == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            minimal(num_replicas=2, autoscaling_config={"max_replicas": 4}),
            r"models\.0: .*autoscaling_config: cannot be combined with num_replicas: 2",
        ),
        (
            {**minimal(), "gateway": {"num_replicas": 3, "autoscaling_config": {}}},
            r"gateway: .*autoscaling_config: cannot be combined with num_replicas: 3",
        ),
        (
            minimal(autoscaling_config={"min_replicas": 3, "max_replicas": 2}),
            r"models\.0\.autoscaling_config: .*max_replicas \(2\) is below min_replicas \(3\)",
        ),
        (
            minimal(autoscaling_config={"max_replicas": 2, "initial_replicas": 5}),
            r"models\.0\.autoscaling_config: .*initial_replicas \(5\)",
        ),
        (
            minimal(autoscaling_config={"max_replicas": 2, "target_ongoing": 5}),
            r"models\.0\.autoscaling_config\.target_ongoing: Extra inputs",
        ),
        (
            minimal(autoscaling_config={"target_ongoing_requests": 0}),
            r"models\.0\.autoscaling_config\.target_ongoing_requests",
        ),
    ],
)
def test_bad_autoscaling_settings_name_their_key(args: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_args(args)


def test_the_gpu_serve_config_validates_and_uses_gpus_and_autoscaling() -> None:
    args = load_serve_config(REPO / "deploy" / "serve_config.gpu.yaml")
    assert all(m.num_gpus > 0 for m in args.models)
    assert any(0 < m.num_gpus < 1 for m in args.models)  # a shared GPU
    assert all(m.autoscaling_config is not None for m in args.models)
    assert all(m.max_queued_requests >= 0 for m in args.models)  # bounded: 503 beyond
    assert args.gateway.autoscaling_config is not None


def test_the_rayservice_embeds_the_gpu_serve_config() -> None:
    manifest = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    gpu_config = yaml.safe_load((REPO / "deploy" / "serve_config.gpu.yaml").read_text())
    assert embedded == gpu_config, "deploy/rayservice.yaml and serve_config.gpu.yaml differ"
    [app] = embedded["applications"]
    parse_args(app["args"])
    cluster = manifest["spec"]["rayClusterConfig"]
    gpu_groups = [
        group
        for group in cluster["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"]
        if "nvidia.com/gpu" in container["resources"]["limits"]
    ]
    assert gpu_groups and all(g["maxReplicas"] >= g["minReplicas"] for g in gpu_groups)
    head_ports = {
        p["containerPort"]
        for p in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {8000, 9000} <= head_ports
    assert embedded["http_options"]["port"] == 8000
    assert embedded["grpc_options"]["port"] == 9000


def test_ray_accepts_the_gpu_serve_config_and_the_deployment_options() -> None:
    from ray.serve.schema import ServeDeploySchema

    from deployments.app import build_app

    document = yaml.safe_load((REPO / "deploy" / "serve_config.gpu.yaml").read_text())
    ServeDeploySchema.model_validate(document)  # what `serve deploy` checks first
    # Ray checks each deployment's options (autoscaling with no num_replicas) at bind.
    build_app(parse_args(document["applications"][0]["args"]))
