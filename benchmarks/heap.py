"""What ``retain_freed_memory`` buys: the default model's batches with and without it.

Each arm runs in a fresh process (glibc reads its malloc settings when a process
starts), alternating, ``--rounds`` times each: the process loads the default model
on this machine's CPUs, runs one untimed batch, then times ``predict_batch`` at the
served batch size and the forward pass alone at batch 8, counting the page faults
each image costs. With the policy the process starts with ``RETAINED_HEAP_ENV``
(as a replica does); without it, with glibc's defaults (a large tensor is a fresh
``mmap``, zeroed by the kernel page by page, every batch). Prints JSON: each arm's
median images/s and faults per image, and their ratio.

    python -m benchmarks.heap [--rounds 2] [--batches 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import (
    REPO,
    StealMeter,
    bare_threads,
    default_model,
    load_adapter,
    shipped_args,
)
from benchmarks.jsonout import json_stdout
from deployments.pipeline.process import RETAINED_HEAP_ENV

FORWARD_BATCH = 8


def measure(batches: int) -> dict[str, float]:
    """In this process: images/s and page faults per image of the default model's batches."""
    from benchmarks.overhead import forward_only, model_pixels
    from tests.images import jpeg

    args = shipped_args()
    config = default_model(args)
    # The policy comes from the environment this process started with, nothing else.
    config = config.model_copy(update={"retain_freed_memory": False})
    threads = bare_threads(config)
    adapter = load_adapter(config, threads)
    pixels = model_pixels(adapter, jpeg(640, 480), args.gateway.limits.image_limits())
    size = config.batching.max_batch_size
    images, sizes = [pixels] * size, [(640, 480)] * size
    forward = forward_only(adapter, [pixels] * FORWARD_BATCH)
    result = {}
    for name, run, count in (
        (f"predict_batch{size}", lambda: adapter.predict_batch(images, sizes), size),
        (f"forward_batch{FORWARD_BATCH}", forward, FORWARD_BATCH),
    ):
        run()  # untimed: first-call costs, and the heap's first growth
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        started = time.perf_counter()
        for _ in range(batches):
            run()
        elapsed = time.perf_counter() - started
        result[f"{name}_images_per_s"] = count * batches / elapsed
        minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        result[f"{name}_faults_per_image"] = minflt / (count * batches)
    return result


def arm(retained: bool, batches: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in RETAINED_HEAP_ENV}
    if retained:
        env.update(RETAINED_HEAP_ENV)
    command = [sys.executable, "-m", "benchmarks.heap", "--child", "--batches", str(batches)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def run() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="processes per arm, alternating")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per figure")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:  # one arm, in the process the parent started for it
        return measure(options.batches)
    runs: dict[str, list[dict[str, float]]] = {"retained": [], "glibc_default": []}
    steal = StealMeter().start()
    for _ in range(options.rounds):
        runs["glibc_default"].append(arm(False, options.batches))
        runs["retained"].append(arm(True, options.batches))
    arms = {
        name: {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]}
        for name, rows in runs.items()
    }
    ratios = {
        key: round(arms["retained"][key] / arms["glibc_default"][key], 3)
        for key in arms["retained"]
        if key.endswith("images_per_s")
    }
    return {
        "benchmark": "heap",
        "policy": RETAINED_HEAP_ENV,
        "rounds": options.rounds,
        "steal_fraction": steal.stop(),
        "arms": arms,
        "retained_over_default": ratios,
    }


def main() -> None:
    with json_stdout() as emit:
        emit(run())


if __name__ == "__main__":
    main()
