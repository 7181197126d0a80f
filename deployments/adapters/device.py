"""Temporary: re-export until the adapters re-cut lands."""

from deployments.adapters.base import DevicePlan, plan_device

__all__ = ["DevicePlan", "plan_device"]
