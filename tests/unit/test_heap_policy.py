"""``retain_freed_memory``: a replica's batches reuse the heap instead of faulting in fresh pages.

Each case runs in a fresh Python process (glibc reads its malloc settings when a process
starts), which allocates and fills a batch's worth of large tensors again and again from
a worker thread (as a replica's batches run) and reports the page faults that cost once the
heap has grown to what a round needs: the kernel's count, no timing. (PyTorch's 64-byte
aligned blocks do not fit the exact holes that blocks of their size leave, so the heap may
still grow in a round or two before its layout settles, however many came before: the
bound below leaves room for that, and is still a fifth of what glibc's defaults cost.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.app import model_actor_options
from deployments.config import ModelConfig
from deployments.pipeline.process import RETAINED_HEAP_ENV

REPO = Path(__file__).resolve().parents[2]
WARM_ROUNDS = 6
ROUNDS = 10
TENSOR_MB = 96  # above glibc's largest mmap threshold (32 MiB) and a thread arena (64 MiB)

BATCHES = f"""
import json, resource, sys, threading
import torch
from deployments.pipeline.process import retain_freed_memory
if sys.argv[1] == "mallopt":
    assert retain_freed_memory()
torch.set_num_threads(1)

def batch():
    tensors = [torch.ones({TENSOR_MB} << 18) for _ in range(3)]  # 3 x {TENSOR_MB} MB of floats
    return float(sum(t[-1] for t in tensors))

def rounds(where):
    for _ in range({WARM_ROUNDS}):  # the heap grows to what a round needs
        batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({ROUNDS}):
        batch()
    where.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

faults = []
if sys.argv[2] == "thread":
    worker = threading.Thread(target=rounds, args=(faults,))
    worker.start()
    worker.join()
else:
    rounds(faults)
print(json.dumps(faults[0]))
"""
#: 4 KiB pages the timed rounds touch.
PAGES = ROUNDS * 3 * TENSOR_MB * 256


def faults(env: dict[str, str], mode: str, where: str) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in RETAINED_HEAP_ENV} | env
    done = subprocess.run(
        [sys.executable, "-c", BATCHES, mode, where],
        env=clean | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(json.loads(done.stdout))


def transparent_huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


@linux_only
def test_a_process_started_with_the_policy_reuses_its_heap_from_any_thread() -> None:
    assert faults(RETAINED_HEAP_ENV, "env", "thread") < PAGES // 5


@linux_only
def test_without_it_every_batch_faults_its_large_tensors_in_again() -> None:
    if transparent_huge_pages_always():
        pytest.skip("huge pages fault 2 MiB at a time: the contrast is not in the count")
    assert faults({}, "none", "thread") > PAGES // 2


@linux_only
def test_a_running_process_applies_it_to_its_main_thread() -> None:
    """``retain_freed_memory()`` (mallopt) where the environment came too late: benchmarks'
    in-process adapters, the GPU script."""
    assert faults({}, "mallopt", "main") < PAGES // 5


def test_replicas_start_with_the_policy_unless_configured_off() -> None:
    config = ModelConfig(name="m", framework="hf_segformer", source="x/segformer-b0")
    options = model_actor_options(config)
    assert options["runtime_env"] == {"env_vars": RETAINED_HEAP_ENV}
    assert options["num_cpus"] == config.num_cpus
    off = model_actor_options(config.model_copy(update={"retain_freed_memory": False}))
    assert "runtime_env" not in off
