"""HuggingFace SegFormer (``SegformerForSemanticSegmentation``) adapter.

Sources are hub ids or local directories (``save_pretrained`` output). The
weights policy decides what happens when pretrained weights cannot be had:
``pretrained`` fails with the reason, ``random`` never tries, ``auto`` falls
back to random weights with a warning. Random weights build the architecture
from the source's own config when one is readable, else from the variant name
(b0..b5) and the label set in the source name.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deployments.adapters.base import SegmentationAdapter, Weights
from deployments.adapters.bilinear_argmax import upsample_argmax
from deployments.adapters.device import DevicePlan
from deployments.adapters.labels import DATASETS, dataset_from_name
from deployments.adapters.loading import (
    fetch_to_cache,
    host_reachable,
    offline,
    with_weights_policy,
)
from deployments.adapters.torch_common import (
    apply_cpu_threads,
    autocast_dtype,
    cuda_available,
    inference_context,
    label_map,
    precision_name,
)
from deployments.config import ModelConfig
from deployments.pipeline.errors import ModelLoadError
from deployments.pipeline.imaging import InputSpec

logger = logging.getLogger("segserve.adapters.hf_segformer")

# Mix Transformer encoder variants (SegFormer paper, table 6).
_COMMON = {
    "num_attention_heads": [1, 2, 5, 8],
    "sr_ratios": [8, 4, 2, 1],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "mlp_ratios": [4, 4, 4, 4],
}
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b1": {"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
    "b3": {
        "hidden_sizes": [64, 128, 320, 512],
        "depths": [3, 4, 18, 3],
        "decoder_hidden_size": 768,
    },
    "b4": {
        "hidden_sizes": [64, 128, 320, 512],
        "depths": [3, 8, 27, 3],
        "decoder_hidden_size": 768,
    },
    "b5": {
        "hidden_sizes": [64, 128, 320, 512],
        "depths": [3, 6, 40, 3],
        "decoder_hidden_size": 768,
    },
}
_VARIANT = re.compile(r"(?:segformer|mit)[-_]?(b[0-5])", re.IGNORECASE)
_DEFAULT_SIZE = 512


class HFSegformerAdapter(SegmentationAdapter):
    framework = "hf_segformer"

    @classmethod
    def cuda_available(cls) -> bool:
        return cuda_available()

    def __init__(
        self,
        model: Any,
        processor: Any,
        device: DevicePlan,
        weights: Weights,
        weights_note: str | None,
        config: ModelConfig,
    ) -> None:
        self.model = model
        self.device = device
        self.weights = weights
        self.weights_note = weights_note
        self.config = config
        id2label = model.config.id2label
        self.labels = [str(id2label.get(i, f"class_{i}")).strip() for i in range(len(id2label))]
        size = getattr(processor, "size", None)
        height = int(_size_field(size, "height") or _DEFAULT_SIZE)
        width = int(_size_field(size, "width") or _DEFAULT_SIZE)
        resample = int(getattr(processor, "resample", Image.Resampling.BILINEAR))
        self.input_spec = InputSpec(size=(width, height), resample=resample)
        self.do_normalize = bool(getattr(processor, "do_normalize", True))
        self.rescale_factor = float(getattr(processor, "rescale_factor", 1 / 255))
        self.mean = torch.tensor(getattr(processor, "image_mean", [0.485, 0.456, 0.406]))
        self.std = torch.tensor(getattr(processor, "image_std", [0.229, 0.224, 0.225]))
        self.torch_device = torch.device(device.kind)
        self.autocast = autocast_dtype(device, config.precision)
        self.precision = precision_name(self.autocast)
        self._torch_label_dtype = torch.uint8 if len(self.labels) <= 256 else torch.int32
        self.forward = self.model
        if config.compile:
            self.forward = compiled(self.model, config.compile_cache_dir)

    # ---------------------------------------------------------------- loading

    @classmethod
    def load(cls, config: ModelConfig, device: DevicePlan) -> HFSegformerAdapter:
        from transformers import SegformerForSemanticSegmentation

        if device.kind == "cpu":
            apply_cpu_threads(device)
        started = time.perf_counter()
        model, weights, note = with_weights_policy(
            config, lambda: _load_pretrained(config.source, SegformerForSemanticSegmentation)
        )
        if model is None:
            model = _build_random(config, SegformerForSemanticSegmentation)
        processor = _load_processor(config.source)
        model.eval()
        model.to(device.kind)
        adapter = cls(model, processor, device, weights, note, config)  # type: ignore[arg-type]
        logger.info(
            "model %r loaded (%s weights, %s) in %.1f s",
            config.name,
            weights,
            device.kind,
            time.perf_counter() - started,
        )
        return adapter

    # ---------------------------------------------------------------- inference

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 HxWx3 images of one size -> normalised NCHW float tensor on the device."""
        batch = torch.from_numpy(np.stack(images)).to(self.torch_device)
        pixels = batch.permute(0, 3, 1, 2).float() * self.rescale_factor
        if self.do_normalize:
            mean = self.mean.to(self.torch_device)[None, :, None, None]
            std = self.std.to(self.torch_device)[None, :, None, None]
            pixels = (pixels - mean) / std
        return pixels

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with inference_context(self.device, self.autocast):
            return self.forward(pixel_values=pixel_values).logits  # type: ignore[no-any-return]

    def predict_same_size(
        self, images: Sequence[np.ndarray], output_sizes: Sequence[tuple[int, int]]
    ) -> list[np.ndarray]:
        logits = self.logits(self.preprocess(images))
        with torch.inference_mode():
            return [
                label_map(upsample_argmax(logits[row], height, width, self._torch_label_dtype))
                for row, (width, height) in enumerate(output_sizes)
            ]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            {"architecture": _variant_of(self.model.config), "compiled": self.config.compile}
        )
        return info


# -------------------------------------------------------------------- helpers


def compiled(model: Any, cache_dir: str | None) -> Any:
    """``torch.compile(model)`` with Inductor's on-disk graph cache (in ``cache_dir`` if
    given), so that a restart loads the graphs it compiled before."""
    if cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir).expanduser())
    import torch._inductor.config

    torch._inductor.config.fx_graph_cache = True
    return torch.compile(model)


def _size_field(size: Any, key: str) -> Any:
    """A field of a processor's size (a dict in older transformers, a SizeDict in newer)."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


def _hub_reachable() -> tuple[bool, str]:
    """Whether the HuggingFace hub answers at all, in seconds, not minutes of retries."""
    if offline("HF_HUB_OFFLINE"):
        return False, "the hub is unreachable: HF_HUB_OFFLINE is set"
    reachable, why = host_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return reachable, f"the hub is unreachable: {why}"


def _load_pretrained(source: str, model_class: Any) -> Any:
    """Weights from a local directory, the HF cache, or the hub; ModelLoadError if none."""
    if _is_local(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"local model directory {str(path)!r} does not exist")
        try:
            return model_class.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load weights from {str(path)!r}: {e}") from e

    def cached() -> Any:
        try:
            return model_class.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):
            return None

    return fetch_to_cache(
        f"model {source!r}",
        cached=cached,
        reachable=_hub_reachable,
        download=lambda: model_class.from_pretrained(source),
        cache="the local HuggingFace cache",
        hint=". Download it where there is network (`hf download`), or point `source` at a "
        "local directory",
        download_errors=(OSError, ValueError),
    )


def _load_processor(source: str) -> Any:
    """The source's image processor when readable (sizes, mean/std), else SegFormer's defaults."""
    try:  # the PIL processor: the default one wants torchvision, which this project avoids
        from transformers import SegformerImageProcessorPil as SegformerImageProcessor
    except ImportError:  # transformers releases before the split
        from transformers import SegformerImageProcessor  # type: ignore[assignment]

    try:
        if _is_local(source):
            return SegformerImageProcessor.from_pretrained(str(Path(source).expanduser()))
        return SegformerImageProcessor.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return SegformerImageProcessor()


def _read_config(source: str) -> Any | None:
    from transformers import SegformerConfig

    try:
        if _is_local(source):
            return SegformerConfig.from_pretrained(str(Path(source).expanduser()))
        return SegformerConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return None


def _build_random(config: ModelConfig, model_class: Any) -> Any:
    from transformers import SegformerConfig

    model_config = _read_config(config.source)
    if model_config is None:
        variant = (config.architecture or _variant_from_name(config.source) or "").lower()
        if variant not in ARCHITECTURES:
            raise ModelLoadError(
                f"cannot tell which SegFormer variant {config.source!r} is; set "
                f"`architecture:` to one of {', '.join(ARCHITECTURES)}"
            )
        dataset = config.labels or dataset_from_name(config.source) or "ade20k"
        names = DATASETS[dataset]
        settings: dict[str, Any] = {
            **_COMMON,
            **ARCHITECTURES[variant],
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }
        model_config = SegformerConfig(**settings)
    torch.manual_seed(config.seed)
    return model_class(model_config)


def _variant_from_name(source: str) -> str | None:
    match = _VARIANT.search(source)
    return match.group(1).lower() if match else None


def _variant_of(model_config: Any) -> str:
    for name, arch in ARCHITECTURES.items():
        if (
            list(model_config.hidden_sizes) == arch["hidden_sizes"]
            and list(model_config.depths) == arch["depths"]
        ):
            return name
    return "custom"
