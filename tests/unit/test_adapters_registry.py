"""The adapter registry: names to classes, and a replica that imports one framework only.

Isolation is checked in fresh interpreters: this test process has imported
torch (and maybe Paddle) already, so only a new process can tell what an
import pulls in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

from deployments.adapters.base import SegmentationAdapter
from deployments.adapters.registry import ADAPTERS, adapter_class
from deployments.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]


def run_fresh(code: str) -> dict[str, typing.Any]:
    """Run ``code`` in a new interpreter at the repository root; the JSON it prints last."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, typing.Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_every_configurable_framework_has_an_adapter() -> None:
    configurable = typing.get_args(ModelConfig.model_fields["framework"].annotation)
    assert set(ADAPTERS) == set(configurable)


def test_an_unknown_framework_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown framework 'onnx' \(known: hf_segformer, mmseg"):
        adapter_class("onnx")


def test_the_interface_imports_no_framework_and_no_adapter() -> None:
    loaded = run_fresh(
        """
        import json, sys
        import deployments.adapters.base, deployments.adapters.device
        import deployments.adapters.loading, deployments.adapters.registry
        print(json.dumps(sorted(sys.modules)))
        """
    )
    modules = set(loaded)
    assert not modules & {"torch", "paddle", "paddleseg", "transformers", "mmseg"}
    assert not {m for m in modules if m.startswith("deployments.adapters.")} & {
        "deployments.adapters.hf_segformer",
        "deployments.adapters.mmseg",
        "deployments.adapters.paddleseg",
        "deployments.adapters.torch_common",
    }


def test_a_segformer_replica_never_imports_paddle(tmp_path: Path) -> None:
    from tests.tiny_models import save_tiny_segformer

    model_dir = save_tiny_segformer(tmp_path / "tiny")
    loaded = run_fresh(
        f"""
        import json, sys
        import numpy as np
        from deployments.adapters.device import plan_device
        from deployments.adapters.registry import adapter_class, cuda_available
        from deployments.config import ModelConfig

        config = ModelConfig(name="m", framework="hf_segformer", source={str(model_dir)!r})
        device = plan_device(0, 1, None, cuda_available=lambda: cuda_available("hf_segformer"))
        adapter = adapter_class("hf_segformer").load(config, device)
        adapter.warm_up()
        (labels,) = adapter.predict_batch([np.zeros((128, 128, 3), np.uint8)], [(64, 64)])
        print(json.dumps({{"shape": list(labels.shape), "modules": sorted(sys.modules)}}))
        """
    )
    assert loaded["shape"] == [64, 64]
    assert "torch" in loaded["modules"] and "paddle" not in loaded["modules"]


def test_a_paddleseg_replica_never_imports_torch() -> None:
    pytest.importorskip("paddleseg", reason="the paddle extra is not installed")
    from tests.paddle_models import PPLITESEG_OPTIONS

    loaded = run_fresh(
        f"""
        import json, sys
        from deployments.adapters.device import plan_device
        from deployments.adapters.registry import adapter_class, cuda_available
        from deployments.config import ModelConfig

        config = ModelConfig(
            name="p", framework="paddleseg", source="PPLiteSeg", weights="random",
            config_options={PPLITESEG_OPTIONS!r},
        )
        device = plan_device(0, 1, None, cuda_available=lambda: cuda_available("paddleseg"))
        adapter = adapter_class("paddleseg").load(config, device)
        adapter.warm_up()
        print(json.dumps({{"labels": len(adapter.labels), "modules": sorted(sys.modules)}}))
        """
    )
    assert loaded["labels"] == 19
    assert "paddle" in loaded["modules"] and "torch" not in loaded["modules"]


@pytest.mark.parametrize("framework", sorted(ADAPTERS))
def test_each_name_gives_its_adapter(framework: str) -> None:
    pytest.importorskip(
        {"hf_segformer": "transformers", "mmseg": "mmseg"}.get(framework, framework)
    )
    adapter = adapter_class(framework)
    assert issubclass(adapter, SegmentationAdapter) and adapter.framework == framework
