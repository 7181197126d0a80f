"""The GPU check, prepared for a machine with CUDA but no Ray and no network.

One run prints one JSON document (progress goes to stderr):

- ``throughput``: SegFormer-B0 at 512x512 through ``LocalEndpoint`` one request at a
  time (batch 1) against the Ray-free batcher at 32 concurrent clients (goal >= 4x),
  and the latency at an open-loop load of 4x the batch-1 rate (goal: p95 <= 2x the
  single-request latency). A closed loop of 32 clients cannot also meet the p95 goal
  unless it is 16x faster (Little's law: mean latency = clients / throughput), so the
  latency goal is read at the open-loop load.
- ``precision``: fp32 against bf16 and fp16 autocast, share of equal label pixels
  (goal >= 99.5%).
- ``photo``: a 6000x4000 synthetic JPEG end to end through the Ray-free pipeline
  (``SegmentationService`` over ``LocalEndpoint``): decode, model, encode.
- ``per_image``: B0 and B2 model time per image (batch 1, and per image in a batch of 8).
- ``mmseg``: UPerNet + BEiT-B (``beit-base_upernet_8xb2-160k_ade20k-640x640``) per
  640x640 image and per photo, when mmseg, mmengine and mmcv are importable.
- ``memory``: peak ``torch.cuda.max_memory_allocated`` per section (goal < 12 GB).
- ``ray``: Ray is made unimportable before anything else is imported
  (``sys.modules["ray"] = None``: ``import ray`` fails and ``find_spec`` says absent, as
  on a machine without it); the JSON records that nothing imported it.

Every model has random weights: SegformerConfig (B0: hidden sizes 32-256, depths
2-2-2-2, decoder 256; B2: 64-512, 3-4-6-3, decoder 768) with ADE20K's 150 labels,
saved with ``save_pretrained`` to a temporary directory and loaded through the real
adapter (``weights: pretrained``, ``source`` = that directory). The classifier is
sharpened (x25, as tests/tiny_models.py does) so random label maps have many
classes and real boundaries instead of a near-constant map; random weights have
smaller margins than trained ones, so the precision figure is a pessimistic one.

    python -m benchmarks.gpu                  # CUDA when available
    python -m benchmarks.gpu --device cpu     # tiny sizes, a few iterations (~1 min)
    python -m benchmarks.gpu --quick          # CUDA, shorter loops (~2 min)

On CPU the sizes are small (128x128 inputs), the loops short and the CUDA-only
figures null with the reason; bf16/fp16 are then CPU autocast forced on the loaded
adapter (the served CPU path runs fp32), so the agreement figure is still computed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.jsonout import json_stdout

WEIGHTS = "random"
WEIGHTS_NOTE = (
    "random weights (SegformerConfig / mmseg config, random init; SegFormer saved with "
    "save_pretrained and loaded through the hf_segformer adapter); classifier sharpened x25"
)
BEIT_CONFIG = "beit-base_upernet_8xb2-160k_ade20k-640x640"
GB = 1024**3
GOALS = {
    "throughput_ratio_min": 4.0,
    "p95_over_single_max": 2.0,
    "label_agreement_min": 0.995,
    "peak_gpu_memory_gb_max": 12.0,
}


@dataclass(frozen=True)
class Profile:
    """How big and how long each measurement is on a device."""

    size: int  # SegFormer input (square)
    single_requests: int
    warm_s: float
    closed_s: float
    closed_max_requests: int
    open_s: float
    open_max_requests: int
    agreement_images: int
    per_image_iters: int
    batch8_iters: int
    photo_repeats: int
    mmseg_iters: int
    warmup_batches: int  # ModelCore's timed warm-up batches at load


PROFILES = {
    "cuda": Profile(512, 60, 2.0, 10.0, 100_000, 8.0, 100_000, 16, 30, 5, 3, 5, 2),
    "cuda-quick": Profile(512, 30, 1.0, 4.0, 100_000, 4.0, 100_000, 8, 10, 2, 1, 2, 2),
    # Small enough for a shared 2-core machine: the code paths, not the figures.
    "cpu": Profile(64, 4, 0.0, 60.0, 40, 60.0, 12, 2, 2, 1, 1, 0, 0),
}


def ray_modules() -> list[str]:
    return sorted(m for m in sys.modules if (m == "ray" or m.startswith("ray.")) and sys.modules[m])


def block_ray() -> list[str]:
    """Make Ray unimportable, as where it is not installed: ``import ray`` raises
    ImportError and ``importlib.util.find_spec("ray")`` is None. Returns what was
    already loaded (nothing, run as ``python -m benchmarks.gpu``)."""
    loaded = ray_modules()
    sys.modules.setdefault("ray", None)  # type: ignore[arg-type]
    return loaded


def log(message: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def ms_summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95)}


class Bench:
    """Device, budget and the random-weight model directories shared by the sections."""

    def __init__(self, device: str, profile: Profile, budget_s: float, args: Any) -> None:
        import torch

        from deployments.adapters.device import plan_device

        self.torch = torch
        self.device = device
        self.cuda = device == "cuda"
        self.profile = profile
        self.args = args
        self.started = time.perf_counter()
        self.budget_s = budget_s
        threads = args.cpu_threads or (4 if self.cuda else max(1, min(2, os.cpu_count() or 1)))
        self.plan = plan_device(1 if self.cuda else 0, threads, threads, lambda: self.cuda)
        self.scratch = Path(tempfile.mkdtemp(prefix="segserve-gpu-bench-"))
        self.dirs: dict[str, Path] = {}
        self.peaks_gb: dict[str, float] = {}
        self.notes: list[str] = []

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    # ------------------------------------------------------------------ models

    def model_dir(self, variant: str) -> Path:
        """A random-weight SegFormer ``variant`` saved with save_pretrained (+ processor)."""
        if variant in self.dirs:
            return self.dirs[variant]
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        from deployments.adapters.hf_segformer import ARCHITECTURES
        from deployments.adapters.labels import ADE20K

        settings: dict[str, Any] = {
            **ARCHITECTURES[variant],
            "num_labels": len(ADE20K),
            "id2label": dict(enumerate(ADE20K)),
            "label2id": {name: i for i, name in enumerate(ADE20K)},
        }
        self.torch.manual_seed(0)
        model = SegformerForSemanticSegmentation(SegformerConfig(**settings))
        with self.torch.no_grad():
            model.decode_head.classifier.weight.mul_(25.0)
        directory = self.scratch / f"segformer-{variant}"
        model.save_pretrained(directory)
        size = self.profile.size
        try:  # the PIL processor: the default one wants torchvision in newer transformers
            try:
                from transformers import SegformerImageProcessorPil as Processor
            except ImportError:
                from transformers import SegformerImageProcessor as Processor  # type: ignore
            Processor(size={"height": size, "width": size}).save_pretrained(directory)
        except Exception as error:  # the adapter then uses SegFormer's defaults (512x512)
            self.notes.append(f"no image processor saved ({type(error).__name__}: {error})")
            log(self.notes[-1])
        self.dirs[variant] = directory
        return directory

    def config(self, variant: str, **changes: Any) -> Any:
        from deployments.config import BatchingConfig, ModelConfig

        size = self.profile.size
        batching = changes.pop("batching", None) or BatchingConfig(
            max_batch_size=8, max_batch_pixels=8 * size * size
        )
        settings = {
            "name": f"segformer-{variant}",
            "framework": "hf_segformer",
            "source": str(self.model_dir(variant)),
            "weights": "pretrained",
            "batching": batching,
            "warmup_batches": self.profile.warmup_batches,
            **changes,
        }
        return ModelConfig(**settings)

    def core(self, config: Any) -> Any:
        """The model's core; a ``weights: pretrained`` one must have loaded its directory."""
        from deployments.model_core import ModelCore

        core = ModelCore(config, self.plan)
        if config.weights == "pretrained" and core.adapter.weights != "pretrained":
            raise RuntimeError(f"{config.name}: weights not loaded from {config.source}")
        return core

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    # ---------------------------------------------------------------- sections

    def section(self, name: str, run: Callable[[], dict[str, Any]], min_s: float = 0.0) -> Any:
        if self.left_s() < min_s:
            log(f"{name}: skipped (budget: {self.left_s():.0f} s left, needs ~{min_s:.0f} s)")
            return {"skipped": f"time budget: {self.left_s():.0f} s left of {self.budget_s:.0f}"}
        log(f"{name}: start ({self.left_s():.0f} s of budget left)")
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        try:
            result = run()
        except Exception as error:  # one section failing must not lose the others' figures
            log(f"{name}: failed: {type(error).__name__}: {error}")
            result = {"error": f"{type(error).__name__}: {error}"}
        result["section_s"] = round(time.perf_counter() - began, 1)
        if self.cuda:
            peak = self.torch.cuda.max_memory_allocated() / GB
            self.peaks_gb[name] = round(peak, 3)
            result["peak_gpu_memory_gb"] = round(peak, 3)
        self.release()
        log(f"{name}: done in {result['section_s']} s")
        return result


def request(image: np.ndarray) -> Any:
    from deployments.contract import PredictRequest

    height, width = image.shape[:2]
    return PredictRequest(image=image, label_size=(width, height))


async def closed_loop(
    endpoint: Any, images: list[np.ndarray], clients: int, duration_s: float, most: int
) -> dict[str, Any]:
    """``clients`` callers, each sending its next request when the last is answered."""
    latencies: list[float] = []
    batch_sizes: list[int] = []
    started = time.perf_counter()
    stop = started + duration_s
    sent = 0

    async def client(index: int) -> None:
        nonlocal sent
        while time.perf_counter() < stop and sent < most:
            sent += 1
            began = time.perf_counter()
            prediction = await endpoint.predict(request(images[(index + sent) % len(images)]))
            latencies.append(time.perf_counter() - began)
            batch_sizes.append(prediction.batch_size)

    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "images_per_s": round(len(latencies) / elapsed, 2),
        **ms_summary(latencies),
        "mean_batch_size": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None,
    }


async def open_loop(
    endpoint: Any, images: list[np.ndarray], rate: float, duration_s: float, most: int
) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` per second, whatever the answers' pace."""
    rng = random.Random(0)
    latencies: list[float] = []
    batch_sizes: list[int] = []

    async def one(image: np.ndarray) -> None:
        began = time.perf_counter()
        prediction = await endpoint.predict(request(image))
        latencies.append(time.perf_counter() - began)
        batch_sizes.append(prediction.batch_size)

    if rate <= 0:
        raise ValueError("an open loop needs a positive rate")
    tasks: list[asyncio.Future[None]] = []
    started = time.perf_counter()
    arrival = started
    while arrival - started < duration_s and len(tasks) < most:
        arrival += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(images[len(tasks) % len(images)])))
    sending_s = time.perf_counter() - started
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {
        "offered_per_s": round(rate, 2),
        # What the loop managed to send (below the offered rate when it fell behind).
        "arrived_per_s": round(len(tasks) / sending_s, 2) if sending_s > 0 else None,
        "requests": len(latencies),
        "images_per_s": round(len(latencies) / elapsed, 2),
        **ms_summary(latencies),
        "mean_batch_size": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None,
    }


def scenes(count: int, size: int) -> list[np.ndarray]:
    from tests.images import scene

    return [scene(size, size, seed=i) for i in range(count)]


# -------------------------------------------------------------------- sections


def single_requests(bench: Bench, images: list[np.ndarray]) -> tuple[dict[str, Any], str]:
    """B0 one request at a time (a batch of one each), through the same endpoint path."""
    from deployments.config import BatchingConfig
    from deployments.model_core import LocalEndpoint

    size = bench.profile.size
    core = bench.core(
        bench.config("b0", batching=BatchingConfig(max_batch_size=1, max_batch_pixels=size**2))
    )
    endpoint = LocalEndpoint(core)

    async def run() -> dict[str, Any]:
        await closed_loop(endpoint, images, 1, bench.profile.warm_s, 5)
        return await closed_loop(endpoint, images, 1, 1e9, bench.profile.single_requests)

    return asyncio.run(run()), str(core.adapter.precision)


def throughput(bench: Bench) -> dict[str, Any]:
    from deployments.config import BatchingConfig
    from deployments.model_core import LocalEndpoint

    profile, size, args = bench.profile, bench.profile.size, bench.args
    images = scenes(8, size)
    one, precision = single_requests(bench, images)
    batching = BatchingConfig(
        max_batch_size=args.max_batch,
        max_batch_pixels=args.max_batch * size * size,
        batch_wait_timeout_s=args.wait_ms / 1000,
        max_concurrent_batches=args.concurrent_batches,
    )
    batched = LocalEndpoint(bench.core(bench.config("b0", batching=batching)))
    single_s = (one["p50_ms"] or 0.0) / 1000
    rate = 4 / single_s if single_s else 0.0

    async def run_batched() -> tuple[dict[str, Any], dict[str, Any]]:
        if profile.warm_s:
            await closed_loop(batched, images, args.clients, profile.warm_s, 10**9)
        closed = await closed_loop(
            batched, images, args.clients, profile.closed_s, profile.closed_max_requests
        )
        opened = await open_loop(batched, images, rate, profile.open_s, profile.open_max_requests)
        return closed, opened

    closed, opened = asyncio.run(run_batched())
    ratio = closed["images_per_s"] / one["images_per_s"] if one["images_per_s"] else None
    single_p50 = one["p50_ms"]

    def over_single(p95: float | None) -> float | None:
        return round(p95 / single_p50, 2) if p95 is not None and single_p50 else None

    return {
        "model": "segformer-b0",
        "weights": WEIGHTS,
        "input": [size, size],
        "precision": precision,
        "batching": batching.model_dump(),
        "batch1": one,
        "batched_closed_loop": {**closed, "p95_over_single": over_single(closed["p95_ms"])},
        "batched_open_loop_at_4x": {**opened, "p95_over_single": over_single(opened["p95_ms"])},
        "throughput_ratio": round(ratio, 2) if ratio else None,
        "goal_throughput_met": bool(ratio and ratio >= GOALS["throughput_ratio_min"]),
        "goal_latency_met_at_4x_load": bool(
            (value := over_single(opened["p95_ms"])) is not None
            and value <= GOALS["p95_over_single_max"]
            # The load was really offered (an event loop that fell behind offers less).
            and (opened["arrived_per_s"] or 0.0) >= 0.9 * rate
        ),
        "note": "single-request latency = batch1 p50; the latency goal is read at an "
        "open-loop load of 4x the batch-1 rate (a 32-client closed loop's latency is "
        "32 / throughput by Little's law)",
    }


def precision(bench: Bench) -> dict[str, Any]:
    torch = bench.torch
    images = scenes(bench.profile.agreement_images, bench.profile.size)

    def labels_with(precision_name: str) -> tuple[list[np.ndarray], str]:
        core = bench.core(bench.config("b0", precision=precision_name))
        if not bench.cuda and precision_name != "fp32":  # CPU autocast, forced on the adapter
            core.adapter.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision_name]
            core.adapter.precision = str(core.adapter.autocast).replace("torch.", "")
        results = core.run_batch([request(image) for image in images])
        maps = [r.labels for r in results]
        return maps, str(core.adapter.precision)

    reference, _ = labels_with("fp32")
    out: dict[str, Any] = {
        "model": "segformer-b0",
        "weights": WEIGHTS,
        "images": len(images),
        "input": [bench.profile.size] * 2,
        "classes_in_fp32_maps": len(np.unique(np.concatenate([m.ravel() for m in reference]))),
        "forced_cpu_autocast": not bench.cuda,
    }
    for name in ("bf16", "fp16"):
        if bench.cuda and name == "bf16" and not torch.cuda.is_bf16_supported():
            out[name] = {"agreement": None, "reason": "this GPU has no bf16"}
            continue
        try:
            maps, ran_as = labels_with(name)
        except Exception as error:
            out[name] = {"agreement": None, "reason": f"{type(error).__name__}: {error}"}
            continue
        shares = [float((a == b).mean()) for a, b in zip(reference, maps, strict=True)]
        out[name] = {
            "ran_as": ran_as,
            "agreement": round(float(np.mean(shares)), 5),
            "worst_image": round(min(shares), 5),
            "goal_met": bool(np.mean(shares) >= GOALS["label_agreement_min"]),
        }
    return out


def per_image(bench: Bench) -> dict[str, Any]:
    profile = bench.profile
    images = scenes(8, profile.size)
    out: dict[str, Any] = {"weights": WEIGHTS, "input": [profile.size] * 2}
    for variant in ("b0", "b2"):
        core = bench.core(bench.config(variant))
        one: list[float] = []
        for i in range(profile.per_image_iters):
            began = time.perf_counter()
            core.run_batch([request(images[i % len(images)])])
            one.append(time.perf_counter() - began)
        eight: list[float] = []
        for _ in range(profile.batch8_iters):
            began = time.perf_counter()
            core.run_batch([request(image) for image in images])
            eight.append((time.perf_counter() - began) / len(images))
        out[f"segformer-{variant}"] = {
            "weights": WEIGHTS,
            "precision": core.adapter.precision,
            "batch1": ms_summary(one),
            "per_image_in_batch8": ms_summary(eight),
        }
        del core
        bench.release()
    return out


def photo_jpeg(width: int = 6000, height: int = 4000) -> bytes:
    from tests.images import jpeg

    return jpeg(width, height, seed=6000, quality=90)


def through_service(bench: Bench, config: Any, data: bytes, repeats: int) -> dict[str, Any]:
    from deployments.config import GatewayConfig
    from deployments.model_core import LocalEndpoint
    from deployments.pipeline.options import parse_options
    from deployments.pipeline.service import SegmentationService

    core = bench.core(config)
    service = SegmentationService(
        {config.name: LocalEndpoint(core)}, [config], GatewayConfig(default_model=config.name)
    )
    options = parse_options(config.name)

    async def run() -> list[tuple[float, Any]]:
        await service.segment(data, options)  # warm: decode workers, first batch
        rows = []
        for _ in range(repeats):
            began = time.perf_counter()
            result = await service.segment(data, options)
            rows.append((time.perf_counter() - began, result))
        return rows

    try:
        rows = asyncio.run(run())
    finally:
        service.close()
    walls = [wall for wall, _ in rows]
    last = rows[-1][1]
    return {
        "weights": WEIGHTS,
        # What the service answered: "pretrained" means loaded from the saved directory.
        "answered_weights": last.weights,
        "photo": [last.width, last.height],
        "processed": list(last.processed),
        "mask_size": list(last.mask_size),
        "classes": len(last.classes or []),
        "wall": ms_summary(walls),
        "timings_ms": {k: round(v, 1) for k, v in last.timings.to_dict().items()},
        "precision": core.adapter.precision,
    }


def photo(bench: Bench) -> dict[str, Any]:
    data = photo_jpeg()
    out: dict[str, Any] = {"weights": WEIGHTS, "jpeg_bytes": len(data), "path": "no Ray"}
    for variant in ("b0", "b2"):
        out[f"segformer-{variant}"] = through_service(
            bench, bench.config(variant), data, bench.profile.photo_repeats
        )
        bench.release()
    return out


def mmseg(bench: Bench) -> dict[str, Any]:
    missing = []
    for module in ("mmseg", "mmengine", "mmcv"):
        try:
            __import__(module)
        except Exception as error:
            missing.append(f"{module} ({type(error).__name__}: {error})")
    if missing:
        return {"skipped": f"not importable: {', '.join(missing)}"}
    from deployments.adapters.mmseg import resolve_config
    from deployments.config import BatchingConfig, ModelConfig

    found = resolve_config(BEIT_CONFIG).name
    if not bench.cuda:
        return {
            "config": found,
            "skipped": "CPU run: UPerNet + BEiT-B at 640x640 takes minutes per image on CPU; "
            "the figure is for CUDA",
        }
    config = ModelConfig(
        name="upernet-beit-b",
        framework="mmseg",
        source=BEIT_CONFIG,
        weights="random",
        batching=BatchingConfig(max_batch_size=1, max_batch_pixels=2560 * 640),
        warmup_batches=min(1, bench.profile.warmup_batches),
    )
    core = bench.core(config)
    image = scenes(1, 640)[0]
    times = []
    for _ in range(bench.profile.mmseg_iters):
        began = time.perf_counter()
        core.run_batch([request(image)])
        times.append(time.perf_counter() - began)
    out: dict[str, Any] = {
        "config": found,
        "weights": core.adapter.weights,  # "random": built from the config, never downloaded
        "precision": core.adapter.precision,
        "per_640x640_image": ms_summary(times),
    }
    del core
    bench.release()
    out["photo"] = through_service(bench, config, photo_jpeg(), bench.profile.photo_repeats)
    return out


def environment(bench: Bench) -> dict[str, Any]:
    torch = bench.torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "device": bench.device,
        "cpu_threads": bench.plan.cpu_threads,
        "cpu_count": os.cpu_count(),
    }
    if bench.cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(
            {
                "gpu": torch.cuda.get_device_name(0),
                "gpu_memory_gb": round(props.total_memory / GB, 1),
                "cuda": torch.version.cuda,
                "bf16_supported": bool(torch.cuda.is_bf16_supported()),
            }
        )
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--quick", action="store_true", help="shorter CUDA loops (~2 min)")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="stop starting sections after this long"
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--wait-ms", type=float, default=2.0)
    parser.add_argument("--concurrent-batches", type=int, default=2)
    parser.add_argument("--cpu-threads", type=int, default=None)
    args = parser.parse_args(argv)
    ray_at_start = block_ray()  # before torch, transformers or deployments are imported

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SEGSERVE_OFFLINE", "1")
    with json_stdout() as emit:
        import torch

        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda but torch sees no CUDA device")
        profile_name = device + ("-quick" if args.quick and device == "cuda" else "")
        profile = PROFILES[profile_name]
        # CUDA: leave room in an 8-minute slot; CPU: only a guard against a stuck run.
        budget_s = args.budget_s or (420.0 if device == "cuda" else 900.0)
        bench = Bench(device, profile, budget_s, args)
        log(f"device {device}, profile {profile_name}, budget {budget_s:.0f} s")
        document: dict[str, Any] = {
            "benchmark": "gpu",
            "weights": WEIGHTS,
            "weights_note": WEIGHTS_NOTE,
            "profile": {"name": profile_name, **asdict(profile)},
            "goals": GOALS,
            "environment": environment(bench),
        }
        document["throughput"] = bench.section("throughput", lambda: throughput(bench), 30)
        document["precision"] = bench.section("precision", lambda: precision(bench), 10)
        document["per_image"] = bench.section("per_image", lambda: per_image(bench), 10)
        document["photo"] = bench.section("photo", lambda: photo(bench), 20)
        # On CPU the section only checks that the config resolves (no model is built).
        document["mmseg"] = bench.section("mmseg", lambda: mmseg(bench), 60 if bench.cuda else 0)
        document["memory"] = memory_summary(bench)
        document["ray"] = ray_summary(ray_at_start)
        document["goals_met"] = goals_met(document)
        document["notes"] = bench.notes
        document["total_s"] = round(time.perf_counter() - bench.started, 1)
        emit(document)
    return 0


def memory_summary(bench: Bench) -> dict[str, Any]:
    if not bench.cuda:
        return {"peak_gpu_memory_gb": None, "reason": "CPU run: no CUDA memory to measure"}
    peak = max(bench.peaks_gb.values(), default=0.0)
    return {
        "peak_gpu_memory_gb": peak,
        "by_section_gb": bench.peaks_gb,
        "goal_met": peak < GOALS["peak_gpu_memory_gb_max"],
        "measure": "torch.cuda.max_memory_allocated, reset at each section's start",
    }


def ray_summary(at_start: list[str]) -> dict[str, Any]:
    loaded = ray_modules()
    return {
        "blocked": "ray" in sys.modules and sys.modules["ray"] is None,
        "imported": bool(loaded),
        "modules": loaded,
        "already_loaded_at_start": at_start,
    }


def goals_met(document: dict[str, Any]) -> dict[str, Any]:
    def get(*path: str) -> Any:
        node: Any = document
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    cuda = document["environment"]["device"] == "cuda"
    return {
        "throughput_4x": get("throughput", "goal_throughput_met") if cuda else None,
        "p95_within_2x_single_at_4x_load": (
            get("throughput", "goal_latency_met_at_4x_load") if cuda else None
        ),
        "bf16_agreement": get("precision", "bf16", "goal_met"),
        "fp16_agreement": get("precision", "fp16", "goal_met"),
        "peak_gpu_memory": get("memory", "goal_met"),
        "reason": None if cuda else "CPU run: timing and memory goals are for CUDA",
    }


if __name__ == "__main__":
    raise SystemExit(main())
