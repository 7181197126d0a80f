"""The ``segserve`` command: segment images and list models, over HTTP or gRPC.

    segserve segment photo.jpg [more.jpg ...] [--model NAME] [--budget-ms MS]
                     [--outputs classes,mask,contours,rle,overlay] [--alpha A]
                     [--overlay-format jpeg|png] [--legend] [--min-area F]
                     [--simplify PX] [--max-classes N] [--grpc] [--out-dir DIR] [--json]

With ``--out-dir``, each image's outputs are written there: ``<image>.labels.png``,
``<image>.overlay.jpg`` (or ``.png``), ``<image>.contours.json``, ``<image>.rle.json``.
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
from clients.http import API_KEY_ENV, DEFAULT_URL, SegServeClient
from clients.result import DrawOptions, SegmentationResult, SegServeClientError

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


class _Client(Protocol):
    def segment(
        self,
        image: bytes | str | Path,
        model: str | None = ...,
        budget_ms: float | None = ...,
        outputs: list[str] | None = ...,
        *,
        draw: DrawOptions | None = ...,
    ) -> SegmentationResult: ...

    def models(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _client(options: argparse.Namespace) -> _Client:
    if options.grpc:
        from clients.grpc_client import GrpcSegServeClient

        return GrpcSegServeClient(
            options.grpc_target, timeout=options.timeout, api_key=options.api_key
        )
    return SegServeClient(options.url, timeout=options.timeout, api_key=options.api_key)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segserve", description="segserve client")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"HTTP base URL ({DEFAULT_URL})")
    parser.add_argument("--grpc-target", default="localhost:9000", help="gRPC host:port")
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument(
        "--api-key", default=None, help=f"API key (default: ${API_KEY_ENV}, when set)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment images")
    segment.add_argument("images", nargs="+", type=Path, help="image files")
    segment.add_argument("--model", help="model name (default: the server's choice)")
    segment.add_argument("--budget-ms", type=float, help="latency budget in milliseconds")
    segment.add_argument(
        "--outputs",
        help="comma-separated: classes, mask, contours, rle, overlay (default: classes,mask)",
    )
    segment.add_argument("--min-area", type=float, help="contours: smallest area (fraction)")
    segment.add_argument("--simplify", type=float, help="contours: tolerance in pixels")
    segment.add_argument("--max-classes", type=int, help="contours: at most this many classes")
    segment.add_argument("--alpha", type=float, help="overlay: colour weight, 0..1")
    segment.add_argument("--overlay-format", choices=["jpeg", "png"], help="overlay encoding")
    segment.add_argument(
        "--legend", action=argparse.BooleanOptionalAction, default=None, help="overlay legend"
    )
    segment.add_argument("--out-dir", type=Path, help="write each image's outputs here")
    segment.add_argument("--json", action="store_true", help="one JSON object per image")

    models = commands.add_parser("models", help="list the served models")
    models.add_argument("--json", action="store_true", help="print the full JSON")
    bench = commands.add_parser("bench", help="load test: closed/open loop, JSON and a plot")
    bench_cli.add_arguments(bench)  # its own transport flags after the command too
    for sub in (segment, models):  # accept transport flags after the command too
        sub.add_argument("--grpc", action="store_true", default=argparse.SUPPRESS)
        sub.add_argument("--url", default=argparse.SUPPRESS)
        sub.add_argument("--grpc-target", default=argparse.SUPPRESS)
        sub.add_argument("--api-key", default=argparse.SUPPRESS)
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
            result = client.segment(
                path,
                model=options.model,
                budget_ms=options.budget_ms,
                outputs=options.outputs.split(",") if options.outputs else None,
                draw=DrawOptions(
                    min_area=options.min_area,
                    simplify=options.simplify,
                    max_classes=options.max_classes,
                    alpha=options.alpha,
                    overlay_format=options.overlay_format,
                    legend=options.legend,
                ),
            )
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


def _write_outputs(path: Path, result: SegmentationResult, out_dir: Path) -> dict[str, str]:
    """Each output the result holds, written beside the others; their paths by output."""
    written: dict[str, Path] = {}
    if result.mask_png:
        written["mask"] = result.save_mask(out_dir / f"{path.stem}.labels.png")
    if result.overlay is not None:
        suffix = "jpg" if result.overlay.format == "jpeg" else result.overlay.format
        written["overlay"] = result.overlay.save(out_dir / f"{path.stem}.overlay.{suffix}")
    for name, value in (("contours", result.contours), ("rle", result.rle)):
        if value is not None:
            target = out_dir / f"{path.stem}.{name}.json"
            target.write_text(json.dumps(value))
            written[name] = target
    return {name: str(target) for name, target in written.items()}


def _report(path: Path, result: SegmentationResult, options: argparse.Namespace) -> None:
    written = _write_outputs(path, result, options.out_dir) if options.out_dir else {}
    if options.json:
        record = {
            "image": str(path),
            "model": result.model,
            "weights": result.weights,
            "width": result.width,
            "height": result.height,
            "classes": [row.to_dict() for row in result.classes or []],
            "timings_ms": result.timings.to_dict(),
            "mask": written.get("mask"),
            "files": written,
        }
        if result.contours is not None:
            record["contours"] = len(result.contours)
        print(json.dumps(record))
        return
    header = f"{path}: {result.width}x{result.height}, model {result.model}"
    header += f" ({result.weights} weights), {result.timings.total:.0f} ms"
    print(header)
    if result.warning:
        print(f"  warning: {result.warning}")
    print(_class_table(result))
    for name, target in written.items():
        print(f"  {'labels' if name == 'mask' else name}: {target}")


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
