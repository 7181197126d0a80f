"""The try-it page in a real headless Chromium (Debian's, driven by Selenium).

The page is served by the gateway's own HTTP app (uvicorn in this process over tiny
real models): upload through the file input, wait for the overlay, read the legend,
the model and the timings, hover a pixel, paste an API key, upload a non-image.
Screenshots go to tests/e2e/artifacts/; with ``SEGSERVE_UPDATE_SCREENSHOTS=1`` the
README's docs/try-it.png is rewritten too. Skips, saying why, without Selenium or a
Chromium (``make browser`` installs Debian's as root).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.images import encode, scene
from tests.transport.live_server import (
    MAX_REQUEST_BYTES,
    demo_app,
    serve_http,
    service_over,
    tiny_cores,
)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "e2e" / "artifacts"
CHROMIUM = os.environ.get("SEGSERVE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SEGSERVE_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 60  # a hang guard, not a speed claim

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')"
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


class RecordAuthorization:
    """Keeps the Authorization header of every /v1 request (what the page sent)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = dict(scope["headers"])
            value = headers.get(b"authorization")
            self.seen.append(value.decode() if value else None)
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def page(tiny_segformer_dir: Path) -> Iterator[tuple[str, RecordAuthorization]]:
    recorder = RecordAuthorization(demo_app(service_over(tiny_cores(tiny_segformer_dir))))
    with serve_http(recorder) as url:
        yield url, recorder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    for path, what in ((CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"no {what} at {path}: run `make browser` (as root, with apt-get)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="segserve-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, condition: Any, message: str) -> Any:
    return WebDriverWait(driver, WAIT_S).until(condition, message)


def text(driver: Any, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def upload(driver: Any, path: Path) -> None:
    driver.execute_script("document.body.dataset.state = 'picking'")
    driver.find_element(By.ID, "file").send_keys(str(path))
    wait_for(
        driver,
        lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error"),
        "the page never finished the request",
    )


def definitions(driver: Any, element_id: str) -> dict[str, str]:
    """A <dl> as term -> value, read in one script (the page may be redrawing it)."""
    pairs: dict[str, str] = driver.execute_script(
        "const dl = document.getElementById(arguments[0]);"
        "return Object.fromEntries([...dl.querySelectorAll('dt')].map("
        "  (dt) => [dt.textContent, dt.nextElementSibling.textContent]));",
        element_id,
    )
    return pairs


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def test_upload_shows_overlay_legend_model_and_timings(
    browser: Any, page: tuple[str, RecordAuthorization], tmp_path: Path
) -> None:
    url, recorder = page
    photo = tmp_path / "street.jpg"
    photo.write_bytes(encode(scene(640, 480, seed=5), "JPEG", quality=90))
    browser.get(url + "/")
    wait_for(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#models tbody tr")) == 2,
        "the models panel never listed the two models",
    )
    panel = text(browser, "#models")
    assert "tiny-random" in panel and "hf_segformer" in panel and "cpu" in panel

    upload(browser, photo)
    assert browser.find_element(By.ID, "error").is_displayed() is False, text(browser, "#error")
    # The service's own `overlay` output is shown (the page draws one from the label PNG
    # only for a server without it).
    overlay = browser.find_element(By.ID, "overlay-image")
    assert overlay.is_displayed() and overlay.get_attribute("data-source") == "server"
    expected = httpx.post(
        f"{url}/v1/segment",
        content=photo.read_bytes(),
        params={"outputs": "classes", "mask_size": "model"},
        timeout=60,
    ).json()
    rows = browser.find_elements(By.CSS_SELECTOR, "#legend tbody tr")
    legend = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")][1:] for row in rows]
    assert legend == [
        [c["name"], str(c["id"]), f"{100 * c['fraction']:.2f} %"] for c in expected["classes"]
    ]
    choice = definitions(browser, "choice")
    assert choice["model"] == "tiny" and choice["chosen by"] == "default"
    assert choice["budget"] == "none" and choice["weights"] == "pretrained"
    timings = definitions(browser, "timings")
    for part in ("decode", "queue", "inference", "encode", "total (server)", "round trip"):
        assert float(timings[part]) >= 0.0, timings
    assert browser.find_element(By.ID, "weights-warning").is_displayed() is False

    # Hovering a pixel names its class, one of the legend's.
    stage = browser.find_element(By.ID, "stage")
    ActionChains(browser).move_to_element_with_offset(stage, 10, 10).perform()
    hovered = text(browser, "#hover")
    assert hovered.startswith("class: "), hovered
    assert hovered.removeprefix("class: ").rsplit(" (id", 1)[0] in {row[0] for row in legend}
    screenshot(browser, "try-it.png")

    # The random-weights model says so where nobody can miss it.
    Select(browser.find_element(By.ID, "model")).select_by_value("tiny-random")
    wait_for(
        browser,
        lambda d: definitions(d, "choice").get("model") == "tiny-random",
        "choosing a model never re-segmented the image",
    )
    warning = browser.find_element(By.ID, "weights-warning")
    assert warning.is_displayed() and "weights: random" in warning.text
    assert definitions(browser, "choice")["chosen by"] == "explicit"
    assert all(value is None for value in recorder.seen)  # no key entered, none sent
    ActionChains(browser).move_to_element_with_offset(stage, 10, 10).perform()
    screenshot(browser, "try-it-random.png")
    if os.environ.get("SEGSERVE_UPDATE_SCREENSHOTS") == "1":  # the README's picture
        browser.set_window_size(1280, 1500)
        browser.save_screenshot(str(REPO / "docs" / "try-it.png"))


def test_a_non_image_shows_the_apis_415_message_and_a_key_is_sent(
    browser: Any, page: tuple[str, RecordAuthorization], tmp_path: Path
) -> None:
    url, recorder = page
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a photo\n")
    browser.get(url + "/")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys("s3cret-key")
    browser.find_element(By.ID, "model").click()  # leaving the field stores the key
    recorder.seen.clear()
    upload(browser, notes)
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert error.text.startswith("415 unsupported_image: ")
    assert "not an image" in error.text
    assert browser.find_element(By.ID, "stage").is_displayed() is False
    assert recorder.seen and all(v == "Bearer s3cret-key" for v in recorder.seen)
    screenshot(browser, "try-it-415.png")

    # Over the server's byte limit: its 413 message, not a network error.
    big = tmp_path / "huge.jpg"
    big.write_bytes(b"\xff\xd8" + bytes(MAX_REQUEST_BYTES + 1024))
    upload(browser, big)
    assert text(browser, "#error").startswith("413 payload_too_large: "), text(browser, "#error")
