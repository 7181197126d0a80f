"""Let MMSegmentation import on ``mmcv-lite`` (mmcv without its compiled ops).

mmseg imports a few names from ``mmcv.ops`` at module import time. With the full
mmcv installed (``mmcv._ext`` importable) nothing here is used. Otherwise a
stand-in ``mmcv.ops`` module is registered before mmseg is imported:

- ``point_sample`` is mmcv's own ``grid_sample`` formulation in pure torch (used by
  PointRend and mask-classification heads), so those models work;
- every other op mmseg may ask for is a placeholder that fails when a model is
  built with it, naming the op and the fix, instead of an ImportError from deep
  inside mmseg.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

import torch
import torch.nn.functional as F

#: Ops mmseg imports from mmcv.ops that need mmcv's compiled extension.
COMPILED_OPS = (
    "sigmoid_focal_loss",
    "PSAMask",
    "CrissCrossAttention",
    "DeformConv2d",
    "ModulatedDeformConv2d",
)

FULL_MMCV_HINT = (
    "install the full mmcv (`pip uninstall mmcv-lite && pip install mmcv==2.1.0`, which "
    "compiles its ops, ~35 min on 2 cores) instead of mmcv-lite"
)


class MissingCompiledOp(RuntimeError):
    """A model needs an mmcv op that mmcv-lite does not have."""


def point_sample(
    input: torch.Tensor, points: torch.Tensor, align_corners: bool = False, **kwargs: Any
) -> torch.Tensor:
    """Sample ``input`` (N, C, H, W) at ``points`` in [0, 1], (N, P, 2) -> (N, C, P), as mmcv."""
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3) if add_dim else output


def _placeholder(name: str) -> type:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise MissingCompiledOp(
            f"this model needs mmcv.ops.{name}, a compiled op: {FULL_MMCV_HINT}"
        )

    return type(
        name, (), {"__init__": fail, "__call__": fail, "__new__": lambda cls, *a, **k: fail()}
    )


def has_compiled_ops() -> bool:
    return importlib.util.find_spec("mmcv._ext") is not None


def install() -> None:
    """Register the stand-in ``mmcv.ops`` when mmcv's compiled ops are missing."""
    import mmcv

    if has_compiled_ops() or getattr(mmcv, "_segserve_compat", False):
        return
    ops = types.ModuleType("mmcv.ops")
    ops.__doc__ = "segserve stand-in for mmcv.ops on mmcv-lite (see mmcv_compat)."
    ops.point_sample = point_sample  # type: ignore[attr-defined]
    for name in COMPILED_OPS:
        setattr(ops, name, _placeholder(name))
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops  # type: ignore[attr-defined]
    mmcv._segserve_compat = True  # type: ignore[attr-defined]
