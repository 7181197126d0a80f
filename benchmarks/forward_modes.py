"""Where a CPU replica's time goes, and what the forward pass gains from each mode.

Parts (``--parts``, all by default), on the shipped default model with random
weights (no network needed):

- ``predict``: the adapter's ``predict_batch`` (preprocess, forward, arg-max) for
  512x512 inputs with label maps at 640x480 and 2000x1500, batches of 1 and 8;
  and the arg-max alone on "trained-like" scores (a few smooth class fields well
  above the rest: random weights keep almost every class in the running).
- ``eager``: the bare forward pass (logits only) per batch size.
- ``channels_last``: the same with model and input in ``channels_last``.
- ``compile``: ``torch.compile`` of the forward pass in fresh processes sharing an
  on-disk Inductor cache (``TORCHINDUCTOR_CACHE_DIR``): compile time cold (empty
  cache) and warm (a restart), then the compiled and the eager forward pass timed
  alternately per batch size. On 2 CPU cores a cold compile takes minutes per
  graph (batches of 2 and more share one, a batch of 1 has its own).

Times are medians of ``--repeat`` runs, wall and process CPU time (on a shared
machine the CPU time is the steadier figure). Prints JSON.

    python -m benchmarks.forward_modes [--parts predict,eager,channels_last,compile]
        [--batches 1,2,4,8] [--repeat 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import REPO, default_model, load_adapter, shipped_args
from benchmarks.jsonout import json_stdout

PARTS = ("predict", "eager", "channels_last", "compile")
LABEL_SIZES = ((640, 480), (2000, 1500))


def timed(run: Callable[[], object], repeat: int) -> dict[str, float]:
    """Median wall and CPU milliseconds of ``repeat`` runs (after the caller's warm-up)."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return {
        "wall_ms": round(statistics.median(walls), 1),
        "cpu_ms": round(statistics.median(cpus), 1),
    }


def random_weights_adapter(threads: int) -> Any:
    config = default_model(shipped_args()).model_copy(update={"weights": "random"})
    return load_adapter(config, threads)


def images(count: int, size: int = 512) -> list[np.ndarray]:
    from tests.images import scene

    return [scene(size, size, seed) for seed in range(count)]


def trained_like(classes: int = 150, size: int = 128, present: int = 8) -> Any:
    """Scores as a trained model gives them: a few smooth class fields crossing, every
    other class far below."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(classes, size, size, generator=generator) * 0.5 - 8
    winners = torch.randperm(classes, generator=generator)[:present]
    coarse = torch.randn(1, present, size // 16, size // 16, generator=generator) * 4
    fields = F.interpolate(coarse, (size, size), mode="bicubic", align_corners=False)[0]
    logits[winners] = fields + 0.1 * torch.randn(present, size, size, generator=generator)
    return logits


def upsample_argmax_function() -> Callable[..., Any]:
    """The tree's arg-max (this script also runs on trees from before the refined one)."""
    import importlib

    try:
        module = importlib.import_module("deployments.adapters.bilinear_argmax")
    except ImportError:
        module = importlib.import_module("deployments.adapters.torch_common")
    function: Callable[..., Any] = module.upsample_argmax
    return function


def predict_part(adapter: Any, repeat: int) -> dict[str, Any]:
    import torch

    batch = images(8)
    adapter.predict_batch(batch[:1], [(640, 480)])  # warm
    rows = []
    for width, height in LABEL_SIZES:
        for count in (1, 8):
            runs = repeat if width * height * count < 10_000_000 else 1
            sizes = [(width, height)] * count
            row = timed(lambda: adapter.predict_batch(batch[: len(sizes)], sizes), runs)  # noqa: B023
            rows.append({"label_size": f"{width}x{height}", "batch": count, **row})
    upsample_argmax = upsample_argmax_function()
    logits = trained_like()
    upsample_argmax(logits, 480, 640, torch.uint8)  # warm (and the kernel's rounding check)
    trained = []
    for width, height in LABEL_SIZES:
        row = timed(lambda: upsample_argmax(logits, height, width, torch.uint8), repeat)  # noqa: B023
        trained.append({"label_size": f"{width}x{height}", "per_image": True, **row})
    return {"predict_batch": rows, "argmax_trained_like": trained}


def forward_part(adapter: Any, batches: list[int], repeat: int, channels_last: bool) -> list[Any]:
    import torch

    model = adapter.model
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    rows = []
    for count in batches:
        pixels = adapter.preprocess(images(count))
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)

        def forward(pixels: Any = pixels) -> None:
            with torch.inference_mode():
                model(pixel_values=pixels)

        forward()  # warm
        row = timed(forward, repeat)
        rows.append(
            {"batch": count, **row, "images_per_s": round(count / row["wall_ms"] * 1000, 2)}
        )
    if channels_last:
        adapter.model.to(memory_format=torch.contiguous_format)
    return rows


def compile_child(batches: list[int], repeat: int, threads: int) -> dict[str, Any]:
    """In a fresh process (the cache directory is in the environment): compile, then time
    the compiled and the eager forward pass alternately (a shared machine's load hits both).

    The batch dimension is marked dynamic, so batches of 2 and more share one graph (a
    batch of 1 is always its own), as a replica batching requests needs."""
    import torch

    adapter = random_weights_adapter(threads)
    compiled = torch.compile(adapter.model)
    rows = []
    for count in sorted(batches, key=lambda b: (b == 1, b)):
        pixels = adapter.preprocess(images(count))
        torch._dynamo.mark_dynamic(pixels, 0)

        def forward(model: Any, pixels: Any = pixels) -> None:
            with torch.inference_mode():
                model(pixel_values=pixels)

        started = time.perf_counter()
        forward(compiled)  # compiles (or loads from the cache) unless a graph fits already
        first = round(time.perf_counter() - started, 2)
        forward(adapter.model)  # warm
        eager, fast = [], []
        for _ in range(repeat):
            eager.append(timed(lambda: forward(adapter.model), 1))
            fast.append(timed(lambda: forward(compiled), 1))
        row: dict[str, Any] = {"batch": count, "first_call_s": first}
        for name, runs in (("eager", eager), ("compiled", fast)):
            for key in ("wall_ms", "cpu_ms"):
                row[f"{name}_{key}"] = round(statistics.median(r[key] for r in runs), 1)
        row["speedup_cpu"] = round(row["eager_cpu_ms"] / row["compiled_cpu_ms"], 2)
        row["speedup_wall"] = round(row["eager_wall_ms"] / row["compiled_wall_ms"], 2)
        rows.append(row)
    return {"rows": rows, "compile_s_total": round(sum(r["first_call_s"] for r in rows), 1)}


def compile_part(batches: list[int], repeat: int, threads: int, timeout_s: float) -> Any:
    with tempfile.TemporaryDirectory(prefix="segserve-inductor-") as cache:
        environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
        command = [
            sys.executable,
            "-m",
            "benchmarks.forward_modes",
            "--compile-child",
            "--batches",
            ",".join(map(str, batches)),
            "--repeat",
            str(repeat),
            "--threads",
            str(threads),
        ]
        runs: dict[str, Any] = {}
        for name in ("cold", "warm_restart"):
            try:
                done = subprocess.run(
                    command,
                    cwd=REPO,
                    env=environment,
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=timeout_s,
                )
            except subprocess.TimeoutExpired:
                runs[name] = {"error": f"not done in {timeout_s:g} s"}
                break
            if done.returncode != 0:
                runs[name] = {"error": done.stderr[-2000:]}
                break
            runs[name] = json.loads(done.stdout)
    return runs


def run() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: the shipped model's")
    parser.add_argument("--compile-timeout-s", type=float, default=1800, help="per compile process")
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = default_model(shipped_args())
    threads = options.threads or config.cpu_threads or 1
    batches = [int(b) for b in options.batches.split(",")]
    if options.compile_child:
        return compile_child(batches, options.repeat, threads)

    import torch

    parts = options.parts.split(",")
    result: dict[str, Any] = {
        "benchmark": "forward_modes",
        "model": config.name,
        "weights": "random",
        "threads": threads,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "input": "512x512",
    }
    adapter = random_weights_adapter(threads)
    if "predict" in parts:
        result["predict"] = predict_part(adapter, options.repeat)
    if "eager" in parts:
        result["eager"] = forward_part(adapter, batches, options.repeat, channels_last=False)
    if "channels_last" in parts:
        result["channels_last"] = forward_part(adapter, batches, options.repeat, True)
    if "compile" in parts:
        result["compile"] = compile_part(
            batches, options.repeat, threads, options.compile_timeout_s
        )
    return result


def main() -> None:
    with json_stdout() as emit:
        emit(run())


if __name__ == "__main__":
    main()
