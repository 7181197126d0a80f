"""Shared fixtures: a tiny SegFormer saved to disk, test markers by folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Tests never reach a model hub and never see a model a user has cached: a
# user's machine may have network and downloads, and results must not depend on
# them. Set before anything imports transformers or starts Ray (replicas and
# `serve run` subprocesses inherit the environment).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["SEGSERVE_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="segserve-tests-hf-")
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="segserve-tests-torch-")
os.environ["SEG_HOME"] = tempfile.mkdtemp(prefix="segserve-tests-paddleseg-")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.tiny_models import TINY_SIZE, save_tiny_segformer

__all__ = ["TINY_SIZE"]

# Property tests draw the same examples on every run (`make test` must not fail one run
# in twenty on a new user's first try); HYPOTHESIS_PROFILE=explore draws new ones each
# run, to look for failures (one found this way is then pinned with @example).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in ("unit", "transport", "integration", "e2e", "cluster"):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def tiny_segformer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SegFormer with random weights, saved with ``save_pretrained`` (+ processor)."""
    return save_tiny_segformer(tmp_path_factory.mktemp("tiny-segformer"))
