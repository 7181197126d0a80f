"""Decode time of each hostile input: main's decode path ("before") vs this one ("after").

Prints JSON: seconds each way and the ratio. "Before" is imaging.py as committed on
a git ref (default ``main``), loaded from ``git show``. Figures, never assertions.
Usage: python -m benchmarks.decode_hostile [--ref main] [--heavy]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from deployments.config import LimitsConfig
from deployments.pipeline.errors import SegServeError
from deployments.pipeline.imaging import DEFAULT_FORMATS, InputSpec, decode_image
from tests.hostile_images import CASES

LIMITS = LimitsConfig().image_limits()


def _old_imaging(ref: str) -> Any:
    source = subprocess.run(
        ["git", "show", f"{ref}:deployments/pipeline/imaging.py"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "imaging_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("imaging_before", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["imaging_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _timed(call: Any) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        call()
        result = "200"
    except SegServeError as e:
        result = f"{e.kind.http_status} {e.code}"
    except Exception as e:  # the old path's 500s
        result = f"500 {type(e).__name__}"
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", default="main")
    parser.add_argument("--heavy", action="store_true", help="include the 100 MP decodes")
    args = parser.parse_args()
    old = _old_imaging(args.ref)
    rows = []
    for case in CASES:
        if case.heavy and not args.heavy:
            continue
        data = case.make()
        formats = case.formats or DEFAULT_FORMATS
        spec = InputSpec(size=(512, 512))
        before_s, before = _timed(
            lambda data=data, formats=formats: old.decode_image(
                data, old.InputSpec(size=(512, 512)), old.ImageLimits(formats=formats)
            )
        )
        after_s, after = _timed(
            lambda data=data, spec=spec, formats=formats: decode_image(
                data, spec, replace(LIMITS, formats=formats)
            )
        )
        rows.append(
            {
                "case": case.name,
                "bytes": len(data),
                "before_s": round(before_s, 4),
                "before": before,
                "after_s": round(after_s, 4),
                "after": after,
                "speedup": round(before_s / max(after_s, 1e-6), 1),
            }
        )
    json.dump(
        {"ref": args.ref, "python": sys.version.split()[0], "cases": rows}, sys.stdout, indent=1
    )
    print()


if __name__ == "__main__":
    main()
