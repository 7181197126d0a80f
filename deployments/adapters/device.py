"""Where a replica runs its model: CUDA or CPU, and how many CPU threads.

A leaf module (no framework, no adapter): the model server plans the device
before it imports the framework that will use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DevicePlan:
    """Where a replica runs its model, decided from what Ray gave it."""

    kind: Literal["cpu", "cuda"]
    cpu_threads: int
    #: Why the replica is on CPU although a GPU was asked for, if it is.
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "cpu_threads": self.cpu_threads,
            "fallback_reason": self.fallback_reason,
        }


def plan_device(
    gpus_assigned: float,
    cpus_assigned: float,
    cpu_threads: int | None,
    cuda_available: Callable[[], bool] | None = None,
) -> DevicePlan:
    """CUDA when the replica was given a GPU and its framework sees one, else CPU.

    CPU threads match the CPUs Ray assigned (rounded up) unless configured, so
    replicas sharing a node do not oversubscribe its cores.
    """
    threads = cpu_threads or max(1, math.ceil(cpus_assigned))
    if gpus_assigned > 0:
        if cuda_available is not None and cuda_available():
            return DevicePlan(kind="cuda", cpu_threads=threads)
        return DevicePlan(
            kind="cpu",
            cpu_threads=threads,
            fallback_reason=f"{gpus_assigned:g} GPU assigned but CUDA is not available here",
        )
    return DevicePlan(kind="cpu", cpu_threads=threads)
