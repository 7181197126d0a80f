"""Where a replica runs its model: CUDA or CPU, and how many CPU threads.

A leaf module (no framework, no adapter): the model server plans the device
before it imports the framework that will use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DevicePlan:
    """Where a replica runs its model, decided from what Ray gave it."""

    kind: Literal["cpu", "cuda"]
    cpu_threads: int
    #: Why the replica is on CPU although a GPU was asked for, if it is.
    fallback_reason: str | None = None
    #: The CPUs the replica's process is pinned to (None: unpinned).
    cpu_affinity: tuple[int, ...] | None = None
    #: What became of ``cpu_affinity`` or ``cpu_threads`` when not all could be honoured.
    cpu_note: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "cpu_threads": self.cpu_threads,
            "fallback_reason": self.fallback_reason,
            "cpu_affinity": None if self.cpu_affinity is None else list(self.cpu_affinity),
            "cpu_note": self.cpu_note,
        }


def plan_device(
    gpus_assigned: float,
    cpus_assigned: float,
    cpu_threads: int | None,
    cuda_available: Callable[[], bool] | None = None,
    cpu_affinity: Sequence[int] | None = None,
    cpu_note: str | None = None,
) -> DevicePlan:
    """CUDA when the replica was given a GPU and its framework sees one, else CPU.

    CPU threads match the CPUs the process is pinned to (``cpu_affinity``: what
    :func:`deployments.affinity.pin_process` achieved), else the CPUs Ray assigned
    (rounded up), unless configured; never more than the pinned CPUs (the config
    refuses more than it lists; fewer pinned than listed caps them here, with a note).
    So replicas sharing a node do not oversubscribe its cores.
    """
    pinned = None if cpu_affinity is None else tuple(cpu_affinity)
    threads = cpu_threads or (len(pinned) if pinned else max(1, math.ceil(cpus_assigned)))
    if pinned and threads > len(pinned):
        capped = f"cpu_threads {threads} capped to the {len(pinned)} pinned CPUs"
        cpu_note = f"{cpu_note}; {capped}" if cpu_note else capped
        threads = len(pinned)
    plan = DevicePlan(kind="cpu", cpu_threads=threads, cpu_affinity=pinned, cpu_note=cpu_note)
    if gpus_assigned > 0:
        if cuda_available is not None and cuda_available():
            return dataclasses.replace(plan, kind="cuda")
        reason = f"{gpus_assigned:g} GPU assigned but CUDA is not available here"
        return dataclasses.replace(plan, fallback_reason=reason)
    return plan
