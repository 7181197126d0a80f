"""Typed application builder: serve_config.yaml ``args`` -> a bound Ray Serve application.

``serve run serve_config.yaml`` imports ``deployments.app:build_app``; Ray
validates the ``args`` against :class:`AppArgs` (unknown keys are errors that
name the key's path) and calls it.
"""

from typing import Any

from ray.serve import Application

from deployments.config import AppArgs, ModelConfig, deployment_name, replica_options
from deployments.gateway import Gateway
from deployments.model_server import ModelServer
from deployments.pipeline.process import RETAINED_HEAP_ENV


def model_actor_options(model: ModelConfig) -> dict[str, Any]:
    """A model replica's Ray actor options: its resources, and the environment its process
    starts with (glibc reads its malloc settings once, at start: see ``retain_freed_memory``)."""
    options: dict[str, Any] = {"num_cpus": model.num_cpus, "num_gpus": model.num_gpus}
    if model.retain_freed_memory:
        options["runtime_env"] = {"env_vars": dict(RETAINED_HEAP_ENV)}
    return options


def build_app(args: AppArgs) -> Application:
    handles = {}
    for model in args.models:
        handles[model.name] = ModelServer.options(  # type: ignore[attr-defined]
            name=deployment_name(model.name),
            **replica_options(model.num_replicas, model.autoscaling_config),
            max_ongoing_requests=model.max_ongoing_requests,
            max_queued_requests=model.max_queued_requests,
            ray_actor_options=model_actor_options(model),
        ).bind(model)
    gateway = args.gateway
    application: Application = Gateway.options(  # type: ignore[attr-defined]
        **replica_options(gateway.num_replicas, gateway.autoscaling_config),
        max_ongoing_requests=gateway.max_ongoing_requests,
        max_queued_requests=gateway.max_queued_requests,
        ray_actor_options={"num_cpus": gateway.num_cpus},
    ).bind(gateway, args.models, handles)
    return application
