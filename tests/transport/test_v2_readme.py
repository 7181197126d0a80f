"""The README's "Open Inference Protocol" examples, run as written against the served app.

Every fenced block of that section marked ``oip-example`` runs (Python with
``.venv-clients``' tritonclient, shell with bash and curl) with only the addresses and the
model name replaced, in a folder holding ``photo.jpg``; it must exit 0.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.images import jpeg
from tests.transport.v2_fixtures import (  # noqa: F401  (the *_fixture imports)
    REPO,
    Served,
    clients_python,
    served_v2_fixture,
)

SECTION = "## Open Inference Protocol"
_BLOCK = re.compile(r"^```(python|bash) oip-example\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def examples() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return [(match[1], match[2]) for match in _BLOCK.finditer(section)]


def test_the_section_has_http_grpc_and_curl_examples() -> None:
    found = examples()
    kinds = [kind for kind, _ in found]
    assert kinds.count("python") >= 2 and "bash" in kinds
    code = "\n".join(body for _, body in found)
    assert "tritonclient.http" in code and "tritonclient.grpc" in code and "curl" in code


@pytest.mark.parametrize(("index", "example"), list(enumerate(examples())), ids=lambda v: str(v))
def test_readme_example_runs(
    index: int, example: tuple[str, str], served_v2: Served, tmp_path: Path
) -> None:
    kind, body = example
    body = (
        body.replace("localhost:8000", served_v2.http)
        .replace("localhost:9000", served_v2.grpc)
        .replace("segformer-b0-ade", "tiny")
    )
    (tmp_path / "photo.jpg").write_bytes(jpeg(160, 120, seed=index))
    if kind == "python":
        command = [str(clients_python()), "-c", body]
    else:
        if shutil.which("curl") is None:
            pytest.skip("the shell examples need curl")
        command = ["bash", "-euo", "pipefail", "-c", body]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{body}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.stdout.strip(), "an example prints what it got"
