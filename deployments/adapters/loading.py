"""What loading weights needs, written once for every adapter.

- :func:`with_weights_policy`: ``weights: pretrained | random | auto``.
- :func:`check_weights`: every weight present and of the model's shape.
- :func:`host_reachable`: a fast network probe (``SEGSERVE_OFFLINE=1`` says no).
- :func:`fetch_to_cache`: "cached? reachable? download : ModelLoadError", and
  :func:`fetch_url`, that pattern for one URL and one cache file.

No framework is imported here: the torch and the Paddle adapters both use it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

from deployments.adapters.base import Weights
from deployments.pipeline.errors import ModelLoadError

if TYPE_CHECKING:
    from deployments.config import ModelConfig

logger = logging.getLogger("segserve.adapters")

T = TypeVar("T")

OFFLINE_ENV = "SEGSERVE_OFFLINE"
_TRUE = ("1", "true", "yes", "on")
#: Seconds a download may go without receiving anything before it is abandoned.
DOWNLOAD_TIMEOUT_S = 60.0


def with_weights_policy(
    config: ModelConfig, load: Callable[[], T]
) -> tuple[T | None, Weights, str | None]:
    """Run ``load`` (the pretrained weights) under ``config.weights``: (result, weights, note).

    ``pretrained`` raises load's ModelLoadError; ``random`` never calls it; ``auto``
    falls back to random weights with a warning. A None result means "build random".
    """
    if config.weights == "random":
        return None, "random", "configured with weights: random"
    try:
        return load(), "pretrained", None
    except ModelLoadError as e:
        if config.weights == "pretrained":
            raise
        note = f"pretrained weights unavailable ({e}); running on random weights"
        logger.warning("model %r: %s", config.name, note)
        return None, "random", note


def check_weights(
    model_shapes: Mapping[str, tuple[int, ...]],
    checkpoint_shapes: Mapping[str, tuple[int, ...]],
    where: str,
) -> None:
    """Raise ModelLoadError naming the first missing, unexpected or mis-shaped weight.

    Frameworks' own loaders skip such weights with a warning (or not at all),
    which would serve a half-random model without telling anyone.
    """
    missing = sorted(set(model_shapes) - set(checkpoint_shapes))
    unexpected = sorted(set(checkpoint_shapes) - set(model_shapes))
    mismatched = [
        f"{key}: checkpoint {checkpoint_shapes[key]} vs model {model_shapes[key]}"
        for key in sorted(set(model_shapes) & set(checkpoint_shapes))
        if tuple(checkpoint_shapes[key]) != tuple(model_shapes[key])
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})")
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelLoadError(f"checkpoint {where} does not match the config: {'; '.join(parts)}")


def offline(variable: str = OFFLINE_ENV) -> bool:
    """Whether an environment variable such as ``SEGSERVE_OFFLINE`` says "no network"."""
    return os.environ.get(variable, "").lower() in _TRUE


def host_reachable(url: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    """Whether ``url``'s host accepts a TCP connection: seconds, not minutes of retries.

    ``SEGSERVE_OFFLINE=1`` says no without trying (air-gapped clusters, tests).
    """
    if offline():
        return False, f"{OFFLINE_ENV} is set"
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, ""
    except OSError as e:
        return False, f"cannot reach {host}:{port} ({e})"


def fetch_to_cache(
    what: str,
    *,
    cached: Callable[[], T | None],
    reachable: Callable[[], tuple[bool, str]],
    download: Callable[[], T],
    cache: str,
    hint: str = "",
    download_errors: tuple[type[Exception], ...] = (Exception,),
) -> T:
    """``cached()`` if it has it, else ``download()`` when ``reachable()``, else ModelLoadError.

    ``what`` names the thing in errors (``"checkpoint https://..."``), ``cache``
    where it was looked for, ``hint`` what the operator can do about it. The
    network is probed first so an offline replica fails in seconds instead of
    sitting in a framework's retry loop. Errors of ``download`` that are in
    ``download_errors`` become ModelLoadError (so ``weights: auto`` can fall back).
    """
    found = cached()
    if found is not None:
        return found
    ok, why = reachable()
    if not ok:
        raise ModelLoadError(f"{what} is not cached ({cache}) and {why}{hint}")
    try:
        return download()
    except ModelLoadError:
        raise
    except download_errors as e:
        raise ModelLoadError(f"cannot download {what}: {e}") from e


def fetch_url(
    url: str,
    target: Path,
    *,
    what: str = "file",
    download: Callable[[], Path] | None = None,
) -> Path:
    """The file at ``url`` as ``target`` (a cache path): used if there, else downloaded there.

    ``download`` replaces the plain HTTP download (PaddleSeg's, which unpacks
    archives); it returns the path it wrote.
    """
    return fetch_to_cache(
        f"{what} {url}",
        cached=lambda: target if target.is_file() else None,
        reachable=lambda: host_reachable(url),
        download=download or (lambda: download_file(url, target)),
        cache=str(target),
    )


def download_file(url: str, target: Path, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``url`` to ``target`` through a temporary file, so no half file is ever cached."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False
    ) as partial:
        try:
            # Some CDNs refuse Python's default user agent.
            request = urllib.request.Request(url, headers={"User-Agent": "segserve"})
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                shutil.copyfileobj(response, partial)
        except BaseException:
            partial.close()
            os.unlink(partial.name)
            raise
    os.replace(partial.name, target)
    return target
