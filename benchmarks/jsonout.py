"""One JSON document on stdout, everything else on stderr: what every benchmark prints.

Standard library only, so that ``benchmarks/gpu.py`` can use it on a machine with
neither Ray nor the service's HTTP client installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def json_stdout() -> Iterator[Callable[[object], None]]:
    """Send everything else (Ray's and the libraries' chatter) to stderr; yield a
    function that prints the one JSON document on the real stdout."""
    saved = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)

    def emit(document: object) -> None:
        sys.stdout.flush()
        with os.fdopen(os.dup(saved), "w") as out:
            json.dump(document, out, indent=2)
            out.write("\n")

    try:
        yield emit
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
