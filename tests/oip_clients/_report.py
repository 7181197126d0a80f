"""Shared helpers of the OIP client scripts; runs inside .venv-clients (no segserve imports).

Each script runs one client family's calls against a served segserve and prints one JSON
report on stdout: ``{"client": ..., "cases": {case: {"ok": true, "value": ...} |
{"ok": false, "error": {"type", "status", "message"}}}}``. Label maps and mask PNGs go to
``--out`` as files (named in the report), so the test compares them with ``/v1``'s.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--url", required=True, help="host:port (HTTP or gRPC), or http://host:port"
    )
    parser.add_argument("--image", required=True, type=Path, help="an image file to segment")
    parser.add_argument("--image2", type=Path, help="a second image (default: --image)")
    parser.add_argument("--model", default="segformer", help="a served model name")
    parser.add_argument("--not-ready-model", help="a configured model that is not ready")
    parser.add_argument("--out", required=True, type=Path, help="folder for labels/PNGs")
    parser.add_argument(
        "--health-only", action="store_true", help="only the liveness and readiness cases"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.image2 = args.image2 or args.image
    return args


def rgb_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class Report:
    """Collects one entry per case; a failing call is recorded, never raised."""

    def __init__(self, client: str, out: Path) -> None:
        self.client = client
        self.out = out
        self.cases: dict[str, dict[str, Any]] = {}

    def case(
        self, name: str, call: Callable[[], Any], error_status: Callable[[BaseException], Any]
    ) -> None:
        try:
            self.cases[name] = {"ok": True, "value": call()}
        except Exception as e:  # the report says what every call did, errors included
            self.cases[name] = {
                "ok": False,
                "error": {
                    "type": f"{type(e).__module__}.{type(e).__qualname__}",
                    "status": error_status(e),
                    "message": str(e),
                    "traceback": traceback.format_exc(limit=3),
                },
            }

    def outputs(self, case: str, tensors: dict[str, Any]) -> dict[str, Any]:
        """Summarise decoded outputs ({name: numpy array}); write labels and PNGs to files."""
        summary: dict[str, Any] = {}
        for name, array in tensors.items():
            entry: dict[str, Any] = {"shape": list(array.shape), "dtype": str(array.dtype)}
            if name == "labels":
                path = self.out / f"{self.client}-{case}-labels.npy"
                np.save(path, array)
                entry["path"] = str(path)
            elif name == "classes":
                entry["tables"] = [json.loads(as_bytes(item, text=True)) for item in array.ravel()]
            elif name == "mask_png":
                pngs = [as_bytes(item, text=False) for item in array.ravel()]
                entry["sha256"] = [hashlib.sha256(png).hexdigest() for png in pngs]
                entry["sizes"] = [list(Image.open(io.BytesIO(png)).size) for png in pngs]
                for index, png in enumerate(pngs):
                    (self.out / f"{self.client}-{case}-mask{index}.png").write_bytes(png)
            summary[name] = entry
        return summary

    def emit(self) -> None:
        json.dump({"client": self.client, "cases": self.cases}, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")


def as_bytes(item: Any, *, text: bool) -> bytes:
    """A BYTES element as the clients hand it back: bytes (binary) or str (JSON: text as
    is, other bytes base64, as segserve writes them)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode() if text else base64.b64decode(item)
    raise TypeError(f"unexpected BYTES element {type(item).__name__}")
