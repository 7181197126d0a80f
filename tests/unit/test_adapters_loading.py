"""The shared fetch-to-cache helper: cache first, fail fast offline, download once over HTTP."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deployments.adapters.loading import OFFLINE_ENV, fetch_to_cache, fetch_url
from deployments.pipeline.errors import ModelLoadError


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving ``directory``: (base URL, paths it was asked for)."""
    asked: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def do_GET(self) -> None:
            asked.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Network allowed (tests run with SEGSERVE_OFFLINE=1); only 127.0.0.1 is ever asked."""
    monkeypatch.delenv(OFFLINE_ENV, raising=False)


def files_under(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


def test_a_cached_file_is_used_without_the_network(tmp_path: Path) -> None:
    assert os.environ.get(OFFLINE_ENV) == "1"
    target = tmp_path / "cache" / "weights.pth"
    target.parent.mkdir()
    target.write_bytes(b"cached weights")
    assert fetch_url("http://nowhere.invalid/weights.pth", target) == target
    assert target.read_bytes() == b"cached weights"


def test_offline_with_nothing_cached_names_the_url_and_the_reason(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "weights.pth"
    url = "http://nowhere.invalid/models/weights.pth"
    with pytest.raises(ModelLoadError) as raised:
        fetch_url(url, target, what="checkpoint")
    message = str(raised.value)
    assert f"checkpoint {url} is not cached" in message and OFFLINE_ENV in message
    assert str(target) in message
    assert not target.parent.exists()


def test_a_served_file_is_downloaded_into_the_cache_once_and_reused(
    online: None, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    payload = os.urandom(300_000)
    (served / "weights.pth").write_bytes(payload)
    cache = tmp_path / "cache" / "checkpoints"
    with serving(served) as (base, asked):
        first = fetch_url(f"{base}/weights.pth", cache / "weights.pth")
        again = fetch_url(f"{base}/weights.pth", cache / "weights.pth")
    assert first == again == cache / "weights.pth"
    assert first.read_bytes() == payload
    assert asked == ["/weights.pth"]  # the second call used the cache
    assert files_under(cache) == ["weights.pth"]  # no partial download left behind


def test_a_missing_file_on_the_server_is_a_load_error_and_caches_nothing(
    online: None, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    cache = tmp_path / "cache"
    with (
        serving(served) as (base, asked),
        pytest.raises(ModelLoadError, match=r"cannot download parameters http://.*absent.*404"),
    ):
        fetch_url(f"{base}/absent.pdparams", cache / "absent.pdparams", what="parameters")
    assert asked == ["/absent.pdparams"]
    assert files_under(cache) == []


def test_an_unreachable_host_fails_in_seconds_naming_it(online: None, tmp_path: Path) -> None:
    with serving(tmp_path) as (base, _):
        port = base.rsplit(":", 1)[1]
    # The server is closed: nothing listens on that port any more.
    with pytest.raises(ModelLoadError, match=rf"not cached .* cannot reach 127\.0\.0\.1:{port}"):
        fetch_url(f"{base}/weights.pth", tmp_path / "cache" / "weights.pth")


def test_only_the_download_errors_named_become_load_errors() -> None:
    def broken() -> str:
        raise KeyError("a bug, not a missing download")

    common: dict[str, Any] = {
        "cached": lambda: None,
        "reachable": lambda: (True, ""),
        "download": broken,
        "cache": "nowhere",
    }
    with pytest.raises(ModelLoadError, match="cannot download model 'm'"):
        fetch_to_cache("model 'm'", **common)
    with pytest.raises(KeyError):
        fetch_to_cache("model 'm'", download_errors=(OSError, ValueError), **common)


def test_paddleseg_parameters_are_fetched_into_its_cache(online: None, tmp_path: Path) -> None:
    pytest.importorskip("paddleseg", reason="the paddle extra is not installed")
    from paddleseg.utils.env import seg_env

    from deployments.adapters.paddleseg import fetch_params

    model = f"model_{uuid.uuid4().hex[:8]}"  # PaddleSeg's cache is keyed by this directory
    (tmp_path / model).mkdir()
    (tmp_path / model / "model.pdparams").write_bytes(b"parameters")
    with serving(tmp_path) as (base, asked):
        first = fetch_params(f"{base}/{model}/model.pdparams")
    again = fetch_params(f"{base}/{model}/model.pdparams")  # server gone: from the cache
    cached = Path(seg_env.PRETRAINED_MODEL_HOME) / model / "model.pdparams"
    assert first == again == cached and cached.read_bytes() == b"parameters"
    assert asked == [f"/{model}/model.pdparams"]
