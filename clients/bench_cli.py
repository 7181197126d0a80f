"""``segserve bench``: closed- and open-loop load over HTTP ``/v1`` or gRPC ``segserve.v1``.

    segserve bench --url URL [--grpc] (--images DIR | --sizes 640x480,1920x1080)
                   [--concurrency 1,4,16] [--rate 2,4] (--duration S | --requests N)
                   [--budget 500:0.5,2000:0.5] [--strict] [--model NAME]
                   [--json FILE] [--plot FILE]

Closed-loop levels run first (each concurrency in turn), then open-loop ones
(each rate); a few warm-up requests go before them and are reported apart. The
JSON report has one record per level (see :func:`clients.bench.summarize`).
Exit status: 0 when the run finished (failed requests are data, counted by
code), 3 when the server cannot be reached, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clients.bench import (
    Sample,
    Workload,
    parse_budget_mix,
    parse_levels,
    percentiles,
    run_closed,
    run_open,
    summarize,
    warm_up,
)
from clients.bench_transports import TRANSPORTS, Target

EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's flags (the transport flags may come after the command)."""
    parser.add_argument("--grpc", action="store_true", default=argparse.SUPPRESS)
    parser.add_argument("--url", default=argparse.SUPPRESS)
    parser.add_argument("--grpc-target", default=argparse.SUPPRESS)
    parser.add_argument(
        "--protocol", choices=sorted(TRANSPORTS), help="transport (default http; --grpc: grpc)"
    )
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--images", type=Path, help="a folder of images, sent in turn")
    images.add_argument("--sizes", help="generated JPEGs of these sizes, e.g. 640x480,1920x1080")
    parser.add_argument("--concurrency", help="closed-loop levels, e.g. 1,4,16")
    parser.add_argument("--rate", help="open-loop Poisson rates (requests/s), e.g. 2,4")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, help="seconds per level (default 10)")
    length.add_argument("--requests", type=int, help="requests per level")
    parser.add_argument("--budget", help="budget mix MS:SHARE,... ('none' for no budget)")
    parser.add_argument("--strict", action="store_true", help="send strict=true with budgets")
    parser.add_argument("--model", help="model name or auto (default: auto)")
    parser.add_argument("--outputs", help="outputs to ask for (default: the server's)")
    parser.add_argument("--mask-size", choices=("original", "model"))
    parser.add_argument("--warmup", type=int, default=3, help="requests before measuring")
    parser.add_argument("--seed", type=int, default=0, help="seed of budgets and arrivals")
    parser.add_argument("--api-key", default=os.environ.get("SEGSERVE_API_KEY"))
    parser.add_argument("--json", dest="json_out", help="write the report here (- : stdout)")
    parser.add_argument("--plot", type=Path, help="write the figure (PNG) here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def load_images(folder: Path) -> list[tuple[str, bytes]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(p.name, p.read_bytes()) for p in files if p.is_file()]


def generated_images(sizes: str, seed: int = 0) -> list[tuple[str, bytes]]:
    """Photo-like JPEGs (gradients and blocks) of each ``WxH``."""
    import numpy as np
    from PIL import Image

    images = []
    rng = np.random.default_rng(seed)
    for item in sizes.split(","):
        width, _, height = item.strip().lower().partition("x")
        w, h = int(width), int(height)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        array = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 0 * x], -1)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            array[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 255, 3)
        buffer = io.BytesIO()
        Image.fromarray(array.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        images.append((f"generated {w}x{h}", buffer.getvalue()))
    return images


class _Bar:
    """A tqdm bar per level with live throughput and p50/p99 (redrawn at most 2x/s)."""

    def __init__(self, description: str, total: int | None, quiet: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(desc=description, total=total, unit="req", file=sys.stderr, disable=quiet)
        self.started = time.perf_counter()
        self.shown = 0.0

    def __call__(self, samples: Sequence[Sample]) -> None:
        self.bar.update(1)
        now = time.perf_counter()
        if now - self.shown < 0.5:
            return
        self.shown = now
        ok = [s.latency_ms for s in samples if s.ok]
        p = percentiles(ok[-500:])
        self.bar.set_postfix(
            rps=f"{len(ok) / max(now - self.started, 1e-9):.2f}",
            p50=f"{p['p50'] or 0:.0f}ms",
            p99=f"{p['p99'] or 0:.0f}ms",
            errors=len(samples) - len(ok),
            refresh=False,
        )

    def close(self) -> None:
        self.bar.close()


async def bench(options: argparse.Namespace, images: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Run every level; the JSON report."""
    protocol = options.protocol or ("grpc" if getattr(options, "grpc", False) else "http")
    concurrency = [int(c) for c in parse_levels(options.concurrency)]
    rates = parse_levels(options.rate)
    if not concurrency and not rates:
        concurrency = [1]
    mix = parse_budget_mix(options.budget)
    duration = None if options.requests else (options.duration or 10.0)
    target = Target(
        url=getattr(options, "url", "http://localhost:8000"),
        grpc_target=getattr(options, "grpc_target", "localhost:9000"),
        model=options.model,
        strict=options.strict,
        outputs=tuple(o.strip() for o in (options.outputs or "").split(",") if o.strip()),
        mask_size=options.mask_size,
        timeout_s=getattr(options, "timeout", 120.0),
        api_key=options.api_key,
        max_connections=max([256, *concurrency]),
    )
    transport = TRANSPORTS[protocol](target)
    workload = Workload([data for _, data in images], mix, seed=options.seed)
    report: dict[str, Any] = {
        "tool": "segserve bench",
        "transport": protocol,
        "target": target.grpc_target if protocol == "grpc" else target.url,
        "model": options.model or "auto",
        "strict": options.strict,
        "budget_mix": mix.to_json(),
        "images": [{"name": n, "bytes": len(d)} for n, d in images],
        "duration_s": duration,
        "requests_per_level": options.requests,
        "levels": [],
    }
    try:
        warm = await warm_up(transport, workload, options.warmup)
        report["warmup"] = {
            "sent": len(warm),
            "ok": sum(s.ok for s in warm),
            "errors": sorted({s.code for s in warm if not s.ok}),
        }
        if warm and all(s.code == "unreachable" for s in warm):
            report["unreachable"] = True
            return report
        for c in concurrency:
            bar = _Bar(f"closed c={c}", options.requests, options.quiet)
            samples, elapsed = await run_closed(
                transport, workload, c, duration, options.requests, progress=bar
            )
            bar.close()
            level = {"mode": "closed", "concurrency": c}
            report["levels"].append(summarize(samples, elapsed, level))
        for rate in rates:
            bar = _Bar(f"open {rate:g}/s", options.requests, options.quiet)
            samples, elapsed = await run_open(
                transport, workload, rate, duration, options.requests, options.seed, bar
            )
            bar.close()
            report["levels"].append(summarize(samples, elapsed, {"mode": "open", "rate": rate}))
    finally:
        await transport.close()
    return report


def run(options: argparse.Namespace) -> int:
    """The ``bench`` subcommand; its exit status."""
    try:
        if options.images:
            images = load_images(options.images)
            if not images:
                print(f"segserve bench: no images in {options.images}", file=sys.stderr)
                return EXIT_USAGE
        else:
            images = generated_images(options.sizes or "640x480", options.seed)
        report = asyncio.run(bench(options, images))
    except (ValueError, OSError) as e:
        print(f"segserve bench: {e}", file=sys.stderr)
        return EXIT_USAGE
    if report.get("unreachable"):
        where = report["target"]
        print(f"segserve bench: cannot reach {where} (warm-up failed)", file=sys.stderr)
        return EXIT_UNREACHABLE
    text = json.dumps(report, indent=2)
    if options.json_out and options.json_out != "-":
        Path(options.json_out).write_text(text + "\n")
    else:
        print(text)
    if options.plot:
        from clients.bench_plot import plot

        plot(report, options.plot)
    for level in report["levels"]:
        name = f"c={level['concurrency']}" if level["mode"] == "closed" else f"{level['rate']}/s"
        lat = level["latency_ms"]
        print(
            f"{level['mode']:6s} {name:>8s}: {level['ok']}/{level['sent']} ok, "
            f"{level['throughput_rps']:.2f} rps, goodput {level['goodput_rps']:.2f}, "
            f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, errors {level['errors']}",
            file=sys.stderr,
        )
    return 0
