"""Typed application builder: serve_config.yaml ``args`` -> a bound Ray Serve application.

``serve run serve_config.yaml`` imports ``deployments.app:build_app``; Ray
validates the ``args`` against :class:`AppArgs` (unknown keys are errors that
name the key's path) and calls it.
"""

from ray.serve import Application

from deployments.config import AppArgs, deployment_name, replica_options
from deployments.gateway import Gateway
from deployments.model_server import ModelServer


def build_app(args: AppArgs) -> Application:
    handles = {}
    for model in args.models:
        handles[model.name] = ModelServer.options(  # type: ignore[attr-defined]
            name=deployment_name(model.name),
            **replica_options(model.num_replicas, model.autoscaling_config),
            max_ongoing_requests=model.max_ongoing_requests,
            max_queued_requests=model.max_queued_requests,
            ray_actor_options={"num_cpus": model.num_cpus, "num_gpus": model.num_gpus},
        ).bind(model)
    gateway = args.gateway
    application: Application = Gateway.options(  # type: ignore[attr-defined]
        **replica_options(gateway.num_replicas, gateway.autoscaling_config),
        max_ongoing_requests=gateway.max_ongoing_requests,
        max_queued_requests=gateway.max_queued_requests,
        ray_actor_options={"num_cpus": gateway.num_cpus},
    ).bind(gateway, args.models, handles)
    return application
