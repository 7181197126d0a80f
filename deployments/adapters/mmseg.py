"""MMSegmentation 1.x adapter: any mmseg model from a config and a checkpoint.

``source`` is a config shipped inside the mmsegmentation package (by name) or a
config file; ``checkpoint`` a path or URL (by default the model zoo's URL for a
shipped config). The config's test-time ``Resize`` becomes the input spec (the
gateway resizes with OpenCV, as mmcv does); mean/std, padding and the model's
own inference mode (whole or slide) run here, through mmseg's data preprocessor
and ``EncoderDecoder.inference``. Images of one size run as one batch; a
mixed-size batch runs as one forward pass per size, so every label map equals
the one the image gets alone (padding to a common size would change what
global-attention models see). Label names and palette come from the
checkpoint's ``dataset_meta``, else from the config's dataset class.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployments.adapters import mmcv_compat
from deployments.adapters.base import SegmentationAdapter, Weights
from deployments.adapters.bilinear_argmax import upsample_argmax
from deployments.adapters.device import DevicePlan
from deployments.adapters.loading import check_weights, fetch_url, with_weights_policy
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

logger = logging.getLogger("segserve.adapters.mmseg")


def configs_root() -> Path:
    import mmseg

    return Path(mmseg.__file__).parent / ".mim" / "configs"


def shipped_configs() -> dict[str, Path]:
    """Configs shipped in the mmsegmentation wheel, by name (file stem)."""
    root = configs_root()
    return {p.stem: p for p in root.rglob("*.py") if "_base_" not in p.parts}


def resolve_config(source: str) -> Path:
    """A config file from a path, a shipped config's name, or its path under configs/."""
    path = Path(source).expanduser()
    if path.suffix == ".py" and path.is_file():
        return path
    name = source.removesuffix(".py")
    under_root = configs_root() / f"{name}.py"
    if under_root.is_file():
        return under_root
    shipped = shipped_configs()
    stem = Path(name).name
    if stem in shipped:
        return shipped[stem]
    close = difflib.get_close_matches(stem, list(shipped), n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ModelLoadError(
        f"no MMSegmentation config {source!r} (neither a file nor one of the "
        f"{len(shipped)} configs shipped with mmsegmentation){hint}"
    )


def zoo_checkpoint_url(config_path: Path) -> str | None:
    """The model zoo's checkpoint URL for a shipped config (from its metafile.yaml)."""
    metafile = config_path.parent / "metafile.yaml"
    if not metafile.is_file():
        return None
    import yaml

    document = yaml.safe_load(metafile.read_text()) or {}
    for entry in document.get("Models", []):
        if Path(str(entry.get("Config", ""))).stem == config_path.stem:
            url = entry.get("Weights")
            return str(url) if url else None
    return None


def _numpy_safe_globals() -> list[Any]:
    """numpy types that mmseg checkpoints' ``meta`` holds, allowed for a weights-only load."""
    import numpy.dtypes

    core = getattr(np, "_core", None) or np.core  # type: ignore[attr-defined]
    allowed: list[Any] = [
        np.ndarray,
        np.dtype,
        core.multiarray._reconstruct,
        core.multiarray.scalar,
    ]
    allowed += [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]
    return allowed


def load_state_dict_safely(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) from an mmengine checkpoint, with torch's weights-only unpickler."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    if not isinstance(checkpoint, dict):
        raise ModelLoadError(
            f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a dict"
        )
    state = checkpoint.get("state_dict", checkpoint)
    state = {re.sub(r"^module\.", "", key): value for key, value in state.items()}
    meta = checkpoint.get("meta") or {}
    return state, meta if isinstance(meta, dict) else {}


def _apply_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    check_weights(
        {key: tuple(value.shape) for key, value in model.state_dict().items()},
        {key: tuple(value.shape) for key, value in state.items()},
        where,
    )
    model.load_state_dict(state, strict=True)


def _fetch(url: str) -> Path:
    """A checkpoint URL in torch's hub cache (where mmengine keeps it), downloaded if needed."""
    from urllib.parse import urlparse

    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    return fetch_url(url, target, what="checkpoint")


class MMSegAdapter(SegmentationAdapter):
    framework = "mmseg"

    @classmethod
    def cuda_available(cls) -> bool:
        return cuda_available()

    def __init__(
        self,
        model: Any,
        device: DevicePlan,
        weights: Weights,
        weights_note: str | None,
        labels: list[str],
        palette: list[list[int]] | None,
        config: ModelConfig,
        config_path: Path,
        checkpoint: str | None,
    ) -> None:
        self.model = model
        self.device = device
        self.weights = weights
        self.weights_note = weights_note
        self.labels = labels
        self.palette = palette
        self.config = config
        self.config_path = config_path
        self.checkpoint = checkpoint
        self.input_spec = _input_spec(model.cfg)
        self.autocast = autocast_dtype(device, config.precision)
        self.precision = precision_name(self.autocast)
        self.align_corners = bool(getattr(model.decode_head, "align_corners", False))
        self._torch_label_dtype = torch.uint8 if len(labels) <= 256 else torch.int32

    @classmethod
    def load(cls, config: ModelConfig, device: DevicePlan) -> MMSegAdapter:
        started = time.perf_counter()
        if device.kind == "cpu":
            apply_cpu_threads(device)
        mmcv_compat.install()
        from mmengine import Config
        from mmengine.registry import init_default_scope

        config_path = resolve_config(config.source)
        cfg = Config.fromfile(str(config_path))
        if config.config_options:
            cfg.merge_from_dict(config.config_options)
        cfg.model.pretrained = None
        cfg.model.train_cfg = None
        if "init_cfg" in cfg.model.get("backbone", {}):
            cfg.model.backbone.init_cfg = None  # no download of backbone weights
        init_default_scope(cfg.get("default_scope", "mmseg"))
        from mmseg.registry import MODELS

        torch.manual_seed(config.seed)
        try:
            model = MODELS.build(cfg.model)
        except mmcv_compat.MissingCompiledOp as e:
            raise ModelLoadError(f"{config_path.stem}: {e}") from e
        except Exception as e:
            if isinstance(e.__cause__, mmcv_compat.MissingCompiledOp) or "mmcv.ops" in str(e):
                raise ModelLoadError(f"{config_path.stem}: {e}") from e
            raise ModelLoadError(f"cannot build {config_path.stem}: {type(e).__name__}: {e}") from e
        model.cfg = cfg

        checkpoint = config.checkpoint or zoo_checkpoint_url(config_path)

        def load_checkpoint() -> dict[str, Any]:
            if checkpoint is None:
                raise ModelLoadError(f"no checkpoint given and none known for {config_path.stem}")
            local = _fetch(checkpoint) if re.match(r"https?://", checkpoint) else Path(checkpoint)
            if not local.is_file():
                raise ModelLoadError(f"checkpoint file {checkpoint!r} does not exist")
            state, meta = load_state_dict_safely(local)
            _apply_weights(model, state, repr(checkpoint))
            return meta

        meta, weights, note = with_weights_policy(config, load_checkpoint)
        labels, palette = _dataset_meta(cfg, meta or {}, model)
        model.eval()
        model.to(device.kind)
        adapter = cls(
            model, device, weights, note, labels, palette, config, config_path, checkpoint
        )
        logger.info(
            "model %r (%s) loaded with %s weights on %s in %.1f s",
            config.name,
            config_path.stem,
            weights,
            device.kind,
            time.perf_counter() - started,
        )
        return adapter

    def batch_inputs(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[Any]]:
        """uint8 RGB images of one size -> (normalised, padded batch; their data samples)."""
        from mmseg.structures import SegDataSample

        height, width = images[0].shape[:2]
        # mmseg's pipeline loads BGR and its preprocessor converts (bgr_to_rgb=True).
        tensors = [
            torch.from_numpy(np.ascontiguousarray(i[..., ::-1])).permute(2, 0, 1) for i in images
        ]
        samples = [
            SegDataSample(metainfo={"ori_shape": (height, width), "img_shape": (height, width)})
            for _ in images
        ]
        data = self.model.data_preprocessor({"inputs": tensors, "data_samples": samples}, False)
        return data["inputs"], data["data_samples"]

    def logits(self, inputs: torch.Tensor, samples: list[Any]) -> torch.Tensor:
        """Class scores at the (unpadded) input size, from the model's own inference mode."""
        metas = [sample.metainfo for sample in samples]
        with inference_context(self.device, self.autocast):
            scores = self.model.inference(inputs, metas)
        return scores.float()  # type: ignore[no-any-return]

    def predict_same_size(
        self, images: Sequence[np.ndarray], output_sizes: Sequence[tuple[int, int]]
    ) -> list[np.ndarray]:
        with torch.inference_mode():
            inputs, samples = self.batch_inputs(images)
            scores = self.logits(inputs.to(self.device.kind), samples)
            results = []
            for row, (out_w, out_h) in enumerate(output_sizes):
                top, bottom, left, right = _padding(samples[row].metainfo)
                height, width = scores.shape[-2:]
                cropped = scores[row, :, top : height - bottom, left : width - right]
                labels = upsample_argmax(
                    cropped, out_h, out_w, self._torch_label_dtype, self.align_corners
                )
                results.append(label_map(labels))
            return results

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            {
                "config": self.config_path.stem,
                "checkpoint": self.checkpoint,
                "palette": self.palette,
                "mmcv_compiled_ops": mmcv_compat.has_compiled_ops(),
            }
        )
        return info


def _padding(meta: dict[str, Any]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding the preprocessor added, as mmseg records it."""
    left, right, top, bottom = meta.get("padding_size", (0, 0, 0, 0))
    return int(top), int(bottom), int(left), int(right)


def _input_spec(cfg: Any) -> InputSpec:
    pipeline = cfg.get("test_pipeline") or cfg.get("test_dataloader", {}).get("dataset", {}).get(
        "pipeline", []
    )
    resize = next((step for step in pipeline if step.get("type") == "Resize"), None)
    if resize is None or "scale" not in resize:
        raise ModelLoadError(
            "the config's test_pipeline has no Resize with a scale; segserve needs a bounded "
            "input size (add one through config_options)"
        )
    scale = tuple(int(v) for v in resize["scale"])
    divisor = int(cfg.model.get("data_preprocessor", {}).get("size_divisor") or 1)
    if resize.get("keep_ratio", False):
        return InputSpec(scale=(scale[0], scale[1]), backend="cv2", size_divisor=divisor)
    return InputSpec(size=(scale[0], scale[1]), backend="cv2", size_divisor=divisor)


def _dataset_meta(cfg: Any, meta: dict[str, Any], model: Any) -> tuple[list[str], Any]:
    dataset_meta = meta.get("dataset_meta")
    if not dataset_meta and "CLASSES" in meta:  # mmseg 0.x checkpoints
        dataset_meta = {"classes": meta["CLASSES"], "palette": meta.get("PALETTE")}
    if not dataset_meta:
        from mmseg.registry import DATASETS

        dataset_type = cfg.get("test_dataloader", {}).get("dataset", {}).get("type")
        dataset_class = DATASETS.get(dataset_type) if dataset_type else None
        dataset_meta = getattr(dataset_class, "METAINFO", None) or {}
    classes = [str(c).strip() for c in dataset_meta.get("classes", [])]
    num_classes = int(getattr(model.decode_head, "num_classes", len(classes)) or len(classes))
    if len(classes) != num_classes:
        classes = [f"class_{i}" for i in range(num_classes)]
    palette = dataset_meta.get("palette")
    return classes, [list(map(int, c)) for c in palette] if palette else None
