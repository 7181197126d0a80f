"""Torch helpers shared by the PyTorch adapters: device choice and the bounded arg-max."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from deployments.adapters.device import DevicePlan

logger = logging.getLogger("segserve.adapters")

#: Classes upsampled at once in :func:`upsample_argmax`; bounds its memory to
#: ``CLASS_CHUNK x out_h x out_w`` floats whatever the number of classes.
CLASS_CHUNK = 16


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


def candidate_classes(logits: torch.Tensor) -> torch.Tensor:
    """Ids of the classes that can win the arg-max anywhere after bilinear upsampling.

    An upsampled value is a convex combination of (at most) a 2x2 cell of
    low-resolution values, so class ``c`` is bounded by its cell maximum while
    the winner reaches at least the best cell minimum of any class. A class
    whose cell maximum is below that bound in every cell can never win; a
    trained model keeps a handful of the 150 ADE20K classes, so upsampling only
    those is several times cheaper and gives the same arg-max.
    """
    padded = F.pad(logits[None].float(), (1, 1, 1, 1), mode="replicate")[0]
    cell_max = F.max_pool2d(padded[None], 2, stride=1)[0]
    cell_min = -F.max_pool2d(-padded[None], 2, stride=1)[0]
    bound = cell_min.max(dim=0).values
    return (cell_max >= bound).flatten(1).any(dim=1).nonzero().flatten()


def upsample_argmax(
    logits: torch.Tensor,
    height: int,
    width: int,
    label_dtype: torch.dtype,
    align_corners: bool = False,
) -> torch.Tensor:
    """Arg-max over classes of bilinearly upsampled logits, without holding them all.

    Equals ``F.interpolate(logits[None], (height, width), mode="bilinear",
    align_corners=False)[0].argmax(0)`` (what HuggingFace's
    ``post_process_semantic_segmentation`` computes), including ties, which go
    to the lowest class id as in ``argmax``, but upsamples only the classes that
    can win (:func:`candidate_classes`), ``CLASS_CHUNK`` at a time.
    """
    logits = logits.float()
    if logits.shape[1] * logits.shape[2] >= height * width:
        # Not upsampling (mmseg's heads already return input-size scores): the output
        # is no larger than the input, so pruning would cost more than it saves.
        return upsample_argmax_all(logits, height, width, align_corners).to(label_dtype)
    candidates = candidate_classes(logits)
    if len(candidates) < logits.shape[0]:
        best = upsample_argmax_all(logits[candidates], height, width, align_corners)
        return candidates[best].to(label_dtype)
    return upsample_argmax_all(logits, height, width, align_corners).to(label_dtype)


def upsample_argmax_all(
    logits: torch.Tensor, height: int, width: int, align_corners: bool = False
) -> torch.Tensor:
    """Chunked arg-max of upsampled logits over every class given (int64 indices)."""
    best_value: torch.Tensor | None = None
    best_index = torch.zeros((height, width), dtype=torch.int64, device=logits.device)
    for start in range(0, logits.shape[0], CLASS_CHUNK):
        chunk = F.interpolate(
            logits[None, start : start + CLASS_CHUNK],
            size=(height, width),
            mode="bilinear",
            align_corners=align_corners,
        )[0]
        value, index = chunk.max(dim=0)
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value  # strict: ties keep the lower class id
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + start, best_index)
    return best_index


def label_map(labels: torch.Tensor) -> np.ndarray:
    """A label tensor as the uint8 (or, past 256 classes, uint16) array clients get."""
    array = labels.cpu().numpy()
    return array if array.dtype == np.uint8 else array.astype(np.uint16)
