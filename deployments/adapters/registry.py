"""Framework name -> adapter class, by import path, imported only when asked for.

A replica imports the one framework it serves: the table holds strings, so
asking for ``hf_segformer`` imports torch and never Paddle, and ``paddleseg``
imports Paddle and never torch (the two do not share a process). Adding a
framework is one line here and its adapter module.
"""

from __future__ import annotations

import importlib

from deployments.adapters.base import SegmentationAdapter

#: Framework name (``ModelConfig.framework``) -> ``"module:Class"`` of its adapter.
ADAPTERS: dict[str, str] = {
    "hf_segformer": "deployments.adapters.hf_segformer:HFSegformerAdapter",
    "mmseg": "deployments.adapters.mmseg:MMSegAdapter",
    "paddleseg": "deployments.adapters.paddleseg:PaddleSegAdapter",
}


def adapter_class(framework: str) -> type[SegmentationAdapter]:
    """The adapter for a framework name, importing its module (and framework) on first use."""
    try:
        path = ADAPTERS[framework]
    except KeyError as e:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"unknown framework {framework!r} (known: {known})") from e
    module_name, _, class_name = path.partition(":")
    adapter = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(adapter, type) and issubclass(adapter, SegmentationAdapter)):
        raise TypeError(f"{path} is not a SegmentationAdapter")
    return adapter


def cuda_available(framework: str) -> bool:
    """Whether ``framework`` sees a usable GPU in this process (imports that framework only)."""
    return adapter_class(framework).cuda_available()
