"""Torch helpers shared by the PyTorch adapters: device, precision, label arrays.

The bounded arg-max of upsampled scores is in ``bilinear_argmax``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from deployments.adapters.device import DevicePlan

logger = logging.getLogger("segserve.adapters")


def apply_cpu_threads(plan: DevicePlan) -> None:
    torch.set_num_threads(plan.cpu_threads)


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def autocast_dtype(
    plan: DevicePlan, precision: Literal["auto", "fp32", "fp16", "bf16"]
) -> torch.dtype | None:
    """The autocast dtype for this device, or None for full fp32."""
    if plan.kind != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """How ``describe()`` names an autocast dtype: "float16", "bfloat16", or "fp32" without one."""
    return str(dtype).replace("torch.", "") if dtype is not None else "fp32"


@contextlib.contextmanager
def inference_context(plan: DevicePlan, dtype: torch.dtype | None) -> Iterator[None]:
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=plan.kind, dtype=dtype):
                yield


def label_map(labels: torch.Tensor) -> np.ndarray:
    """A label tensor as the uint8 (or, past 256 classes, uint16) array clients get."""
    array = labels.cpu().numpy()
    return array if array.dtype == np.uint8 else array.astype(np.uint16)
