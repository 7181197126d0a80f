"""The ``segserve`` command: segment images and list models, over HTTP or gRPC.

    segserve segment photo.jpg [more.jpg ...] [--model NAME] [--budget-ms MS]
                     [--grpc] [--out-dir DIR] [--json]
    segserve models [--grpc] [--json]
    segserve bench [--grpc] --images DIR --concurrency 1,4,16 | --rate 2,4 ...
                   (load test; see clients/bench_cli.py)

Exit status: 0 when every image was segmented, 1 when any request failed (each
failure is reported on stderr), 3 when the server cannot be reached, 2 for usage
errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from clients import bench_cli
from clients.http import DEFAULT_URL, SegServeClient
from clients.result import SegmentationResult, SegServeClientError

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


class _Client(Protocol):
    def segment(
        self, image: bytes | str | Path, model: str | None = ..., budget_ms: float | None = ...
    ) -> SegmentationResult: ...

    def models(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _client(options: argparse.Namespace) -> _Client:
    if options.grpc:
        from clients.grpc_client import GrpcSegServeClient

        return GrpcSegServeClient(options.grpc_target, timeout=options.timeout)
    return SegServeClient(options.url, timeout=options.timeout)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segserve", description="segserve client")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"HTTP base URL ({DEFAULT_URL})")
    parser.add_argument("--grpc-target", default="localhost:9000", help="gRPC host:port")
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment images")
    segment.add_argument("images", nargs="+", type=Path, help="image files")
    segment.add_argument("--model", help="model name (default: the server's choice)")
    segment.add_argument("--budget-ms", type=float, help="latency budget in milliseconds")
    segment.add_argument("--out-dir", type=Path, help="write <image>.labels.png here")
    segment.add_argument("--json", action="store_true", help="one JSON object per image")

    models = commands.add_parser("models", help="list the served models")
    models.add_argument("--json", action="store_true", help="print the full JSON")
    bench = commands.add_parser("bench", help="load test: closed/open loop, JSON and a plot")
    bench_cli.add_arguments(bench)  # its own transport flags after the command too
    for sub in (segment, models):  # accept transport flags after the command too
        sub.add_argument("--grpc", action="store_true", default=argparse.SUPPRESS)
        sub.add_argument("--url", default=argparse.SUPPRESS)
        sub.add_argument("--grpc-target", default=argparse.SUPPRESS)
    return parser


def _class_table(result: SegmentationResult, top: int = 10) -> str:
    lines = [
        f"  {row.fraction * 100:6.2f}%  {row.id:4d}  {row.name}" for row in result.classes or []
    ]
    more = len(lines) - top
    return "\n".join(lines[:top] + ([f"  ... {more} more"] if more > 0 else []))


def _segment(client: _Client, options: argparse.Namespace) -> int:
    failures = 0
    if options.out_dir:
        options.out_dir.mkdir(parents=True, exist_ok=True)
    images: Sequence[Path] = options.images
    progress = None
    if len(images) > 1:
        from tqdm import tqdm

        progress = tqdm(total=len(images), unit="image", file=sys.stderr)
    for path in images:
        try:
            result = client.segment(path, model=options.model, budget_ms=options.budget_ms)
        except SegServeClientError as e:
            if e.code in ("unreachable", "timeout"):
                print(f"segserve: {e.message}", file=sys.stderr)
                return EXIT_UNREACHABLE
            print(f"segserve: {path}: {e.code}: {e.message}", file=sys.stderr)
            failures += 1
        except OSError as e:
            print(f"segserve: {path}: cannot read: {e.strerror or e}", file=sys.stderr)
            failures += 1
        else:
            _report(path, result, options)
        if progress is not None:
            progress.update()
    if progress is not None:
        progress.close()
    return EXIT_FAILED if failures else 0


def _report(path: Path, result: SegmentationResult, options: argparse.Namespace) -> None:
    written = None
    if options.out_dir and result.mask_png:
        written = result.save_mask(options.out_dir / f"{path.stem}.labels.png")
    if options.json:
        record = {
            "image": str(path),
            "model": result.model,
            "weights": result.weights,
            "width": result.width,
            "height": result.height,
            "classes": [row.to_dict() for row in result.classes or []],
            "timings_ms": result.timings.to_dict(),
            "mask": str(written) if written else None,
        }
        print(json.dumps(record))
        return
    header = f"{path}: {result.width}x{result.height}, model {result.model}"
    header += f" ({result.weights} weights), {result.timings.total:.0f} ms"
    print(header)
    if result.warning:
        print(f"  warning: {result.warning}")
    print(_class_table(result))
    if written:
        print(f"  labels: {written}")


def _models(client: _Client, options: argparse.Namespace) -> int:
    try:
        listing = client.models()
    except SegServeClientError as e:
        print(f"segserve: {e.message}", file=sys.stderr)
        return EXIT_UNREACHABLE if e.code in ("unreachable", "timeout") else EXIT_FAILED
    if options.json:
        print(json.dumps(listing, indent=2))
        return 0
    for model in listing["models"]:
        mark = "*" if model.get("name") == listing.get("default") else " "
        print(
            f"{mark} {model.get('name')}  {model.get('framework')}  {model.get('weights')} "
            f"weights  {len(model.get('labels', []))} classes  {model.get('source')}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    if options.command == "bench":
        return bench_cli.run(options)
    client = _client(options)
    try:
        if options.command == "segment":
            return _segment(client, options)
        return _models(client, options)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
