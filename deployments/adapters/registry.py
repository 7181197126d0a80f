"""Temporary: re-export until the adapters re-cut lands."""

from deployments.adapters.base import adapter_class


def cuda_available(framework: str) -> bool:
    return adapter_class(framework).cuda_available()


__all__ = ["adapter_class", "cuda_available"]
