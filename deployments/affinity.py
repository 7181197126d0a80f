"""CPU pinning at replica start: ``cpu_affinity`` of a model or of the gateway.

On a CPU-only node, Ray's ``num_cpus`` is bookkeeping: every replica's threads
still run on every core. A replica configured with ``cpu_affinity`` pins its
whole process (every thread it has, and so every thread and process it starts
later) to those CPUs, so a model gets cores of its own and its latency does not
depend on what the others run.

A wrong id is a deployment mistake, not a reason to crash-loop the replica: ids
the node does not let this process use are logged as an error and dropped, and
with none left the replica runs unpinned (also logged). Outside Linux there is
no ``sched_setaffinity``; the option is logged and ignored. :class:`Pinning`
says what happened, for the device plan and ``/v1/models``.

A leaf module: no Ray, no framework, no pipeline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Pinning:
    """The CPUs a process was pinned to (None: not pinned), and why not all asked for."""

    cpus: tuple[int, ...] | None
    note: str | None = None


def choose_cpus(requested: Sequence[int], available: Iterable[int]) -> Pinning:
    """The requested ids this node lets the process use; pure (no system call)."""
    allowed = set(available)
    usable = tuple(c for c in requested if c in allowed)
    missing = [c for c in requested if c not in allowed]
    if not missing:
        return Pinning(usable)
    node = f"this node lets it use CPUs {sorted(allowed)}"
    if not usable:
        return Pinning(None, f"cpu_affinity {list(requested)}: none exists here ({node}); unpinned")
    return Pinning(usable, f"cpu_affinity: CPUs {missing} do not exist here ({node}); dropped")


def pin_process(
    requested: Sequence[int] | None,
    who: str,
    setter: Callable[[int, set[int]], None] | None = None,
    getter: Callable[[int], set[int]] | None = None,
    threads: Callable[[], list[int]] | None = None,
) -> Pinning:
    """Pin this process (all of its threads) to ``requested``; ``who`` names it in the log.

    ``setter``/``getter``/``threads`` default to ``os.sched_setaffinity``,
    ``os.sched_getaffinity`` and the thread ids in ``/proc/self/task`` (tests pass fakes).
    """
    if requested is None:
        return Pinning(None)
    setter = setter or getattr(os, "sched_setaffinity", None)
    getter = getter or getattr(os, "sched_getaffinity", None)
    if setter is None or getter is None:
        note = f"cpu_affinity {list(requested)} ignored: this platform cannot pin a process"
        logger.warning("%s: %s", who, note)
        return Pinning(None, note)
    pinning = choose_cpus(requested, getter(0))
    if pinning.note:
        logger.error("%s: %s", who, pinning.note)
    if pinning.cpus is None:
        return pinning
    cpus = set(pinning.cpus)
    # sched_setaffinity(0) pins the calling thread only: pin every thread there is (Ray's
    # and the runtime's), so threads started from any of them inherit the mask.
    for tid in (threads or _thread_ids)():
        try:
            setter(tid, cpus)
        except OSError:  # a thread that ended meanwhile
            continue
    setter(0, cpus)
    logger.info("%s: pinned to CPUs %s", who, sorted(cpus))
    return pinning


def _thread_ids() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return []
