"""PaddleSeg adapter: a PaddleSeg model in dygraph, or an exported model on Paddle Inference.

``source`` is one of

- a PaddleSeg config file (``.yml``, ``_base_`` files resolved as PaddleSeg does);
- a PaddleSeg model class registered in ``paddleseg.cvlibs.manager.MODELS``
  (``PPLiteSeg``, ``SegFormer``...), whose arguments are ``config_options.model``;
- an exported inference model (``paddle.jit.save`` output, or PaddleSeg's
  ``export.py`` directory with its ``deploy.yaml``): a directory or a path prefix,
  run with Paddle Inference's predictor.

``config_options`` is a PaddleSeg config dict merged over the source's (for
example ``val_dataset.transforms``). Parameters come from ``checkpoint`` (a
``.pdparams`` path or URL) under the ``weights`` policy; every weight must match
the model (PaddleSeg's own loader skips mismatches with a warning). The
validation transforms become the input spec: ``Resize``/``ResizeByLong`` are
done by the gateway with OpenCV as PaddleSeg does (keep-ratio sizes rounded
with Python's ``round``; ``size_divisor`` rounds the resize target up), and
``Normalize`` runs here through PaddleSeg's own function. PaddleSeg models
return logits at the full input size, so a config without a resize is refused:
the input must be bounded before the model sees it.

Paddle never shares a process with PyTorch: this module imports no torch, and
each model runs in its own replica process. Paddle sets ``OMP_NUM_THREADS=1``
at import unless it is set, so the replica sets it (and Paddle's math-library
threads) to the CPUs Ray gave it before importing Paddle.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deployments.adapters.base import (
    DevicePlan,
    SegmentationAdapter,
    Weights,
    check_weights,
    host_reachable,
    with_weights_policy,
)
from deployments.adapters.labels import DATASETS, dataset_from_name
from deployments.config import ModelConfig
from deployments.pipeline.errors import ModelLoadError
from deployments.pipeline.imaging import InputSpec, resize_labels

logger = logging.getLogger("segserve.adapters.paddleseg")

#: PaddleSeg dataset classes whose label names segserve knows.
_DATASET_LABELS = {"ADE20K": "ade20k", "Cityscapes": "cityscapes"}
_EXPORTED_PROGRAMS = (".json", ".pdmodel")  # PIR (Paddle 3) and legacy program files


def set_cpu_threads(threads: int) -> None:
    """Paddle's CPU threads for this process: before its import (OMP_NUM_THREADS), and after.

    Paddle forces ``OMP_NUM_THREADS=1`` at import when it is unset, and
    :func:`paddle.base.core.set_num_threads` sets the math library's threads.
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "paddle" in sys.modules:
        import paddle

        paddle.base.core.set_num_threads(threads)


def import_paddle(device: DevicePlan) -> Any:
    if device.kind == "cpu":
        set_cpu_threads(device.cpu_threads)
    try:
        import paddle
    except ImportError as e:
        raise ModelLoadError(
            f"PaddlePaddle is not installed ({e}): install segserve[paddle] and "
            "`pip install --no-deps paddleseg==2.8.0` (see the README)"
        ) from e
    if device.kind == "cpu":
        set_cpu_threads(device.cpu_threads)
    paddle.device.set_device("gpu:0" if device.kind == "cuda" else "cpu")
    return paddle


def exported_model_files(source: str) -> tuple[Path, Path] | None:
    """(program, params) of an exported inference model at ``source``, if it names one."""
    path = Path(source).expanduser()
    if path.suffix in (*_EXPORTED_PROGRAMS, ".pdiparams"):
        prefix = path.with_suffix("")
    elif path.is_dir():
        programs = sorted(p for p in path.iterdir() if p.suffix in _EXPORTED_PROGRAMS)
        weights = sorted(path.glob("*.pdiparams"))
        if not programs and not weights:
            return None
        if not programs or not weights:
            raise ModelLoadError(
                f"exported model directory {source!r} needs a program (model.json or "
                f"model.pdmodel) and its parameters (model.pdiparams); found "
                f"{sorted(p.name for p in path.iterdir())}"
            )
        prefix = programs[0].with_suffix("")
    elif any(path.with_name(path.name + ext).is_file() for ext in (".pdiparams", ".json")):
        prefix = path
    else:
        return None
    program = next(
        (prefix.with_name(prefix.name + ext) for ext in _EXPORTED_PROGRAMS
         if prefix.with_name(prefix.name + ext).is_file()),
        None,
    )  # fmt: skip
    params = prefix.with_name(prefix.name + ".pdiparams")
    if program is None:
        raise ModelLoadError(f"exported model {source!r}: no {prefix.name}.json or .pdmodel")
    if not params.is_file():
        raise ModelLoadError(f"exported model {source!r}: parameters file {params} is missing")
    return program, params


def load_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The PaddleSeg config dict: the source's (file or model class) with config_options merged."""
    from paddleseg.cvlibs.config import merge_config_dicts, parse_from_yaml

    source = config.source
    path = Path(source).expanduser()
    if path.suffix in (".yml", ".yaml"):
        if not path.is_file():
            raise ModelLoadError(f"PaddleSeg config file {source!r} does not exist")
        try:
            base = parse_from_yaml(str(path))
        except Exception as e:
            raise ModelLoadError(f"cannot read PaddleSeg config {source!r}: {e}") from e
    elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", source):
        base = {"model": {"type": source}}
    else:
        raise ModelLoadError(
            f"PaddleSeg source {source!r} is neither a config file (.yml), a model class "
            "name, nor an exported inference model (model.json/.pdmodel + .pdiparams)"
        )
    return merge_config_dicts(copy.deepcopy(config.config_options), base)  # type: ignore[no-any-return]


def _without_pretrained(component: Any) -> Any:
    """A component config with every ``pretrained`` URL dropped (no backbone downloads)."""
    if isinstance(component, dict):
        return {
            key: _without_pretrained(value)
            for key, value in component.items()
            if key != "pretrained"
        }
    if isinstance(component, list):
        return [_without_pretrained(item) for item in component]
    return component


def build_model(dic: dict[str, Any], seed: int) -> Any:
    """The dygraph model from the config's ``model`` section, with random weights."""
    import paddle
    from paddleseg.cvlibs import manager
    from paddleseg.cvlibs.builder import Builder

    model_cfg = _without_pretrained(copy.deepcopy(dic.get("model") or {}))
    model_type = model_cfg.get("type")
    known = sorted(manager.MODELS.components_dict)
    if not model_type:
        raise ModelLoadError("the PaddleSeg config has no model.type")
    if model_type not in manager.MODELS.components_dict:
        close = difflib.get_close_matches(str(model_type), known, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(
            f"unknown PaddleSeg model class {model_type!r}{hint} (known: {', '.join(known)})"
        )
    if "num_classes" not in model_cfg:
        dataset = _dataset_type(dic)
        dataset_class = manager.DATASETS.components_dict.get(dataset) if dataset else None
        if dataset_class is None or not hasattr(dataset_class, "NUM_CLASSES"):
            raise ModelLoadError(
                f"model {model_type}: set model.num_classes (no dataset class gives it)"
            )
        model_cfg["num_classes"] = int(dataset_class.NUM_CLASSES)
    builder = Builder(None, comp_list=[manager.MODELS, manager.BACKBONES])
    paddle.seed(seed)
    try:
        model = builder.build_component(model_cfg)
    except Exception as e:
        message = " ".join(str(e).split())
        raise ModelLoadError(f"cannot build PaddleSeg model {model_type}: {message}") from e
    model.eval()
    return model


def _dataset_type(dic: dict[str, Any]) -> str | None:
    for section in ("val_dataset", "train_dataset"):
        value = (dic.get(section) or {}).get("type")
        if value:
            return str(value)
    return None


def fetch_params(url: str) -> Path:
    """A ``.pdparams`` URL, from PaddleSeg's cache (``$SEG_HOME``) or downloaded there."""
    from paddleseg.utils import download_pretrained_model
    from paddleseg.utils.env import seg_env

    parts = url.rstrip("/").split("/")
    cached = Path(seg_env.PRETRAINED_MODEL_HOME) / parts[-2] / parts[-1]
    if cached.is_file():
        return cached
    reachable, why = host_reachable(url)
    if not reachable:
        raise ModelLoadError(f"parameters {url} are not cached ({cached}) and {why}")
    try:
        return Path(download_pretrained_model(url))
    except Exception as e:
        raise ModelLoadError(f"cannot download parameters {url}: {e}") from e


def load_params(model: Any, checkpoint: str) -> None:
    """Load a ``.pdparams`` file or URL into ``model``; every weight must match."""
    import paddle

    local = fetch_params(checkpoint) if re.match(r"https?://", checkpoint) else Path(checkpoint)
    if not local.is_file():
        raise ModelLoadError(f"parameters file {checkpoint!r} does not exist")
    try:
        state = paddle.load(str(local))
    except Exception as e:
        raise ModelLoadError(f"cannot read parameters {checkpoint!r}: {e}") from e
    if not isinstance(state, dict):
        raise ModelLoadError(f"parameters {checkpoint!r} hold a {type(state).__name__}, not a dict")
    check_weights(
        {key: tuple(value.shape) for key, value in model.state_dict().items()},
        {key: tuple(np.shape(value)) for key, value in state.items()},
        repr(checkpoint),
    )
    model.set_state_dict(state)


def input_spec_and_normalize(transforms: list[dict[str, Any]] | None) -> tuple[InputSpec, Any]:
    """The gateway's resize (an InputSpec) and PaddleSeg's Normalize, from eval transforms."""
    from paddleseg.transforms import Normalize

    spec: InputSpec | None = None
    normalize: Any = None
    for step in transforms or []:
        kind = step.get("type")
        args = {k: v for k, v in step.items() if k != "type"}
        if kind == "Resize":
            if args.get("interp", "LINEAR") != "LINEAR":
                raise ModelLoadError(f"Resize interp {args['interp']!r}: only LINEAR is served")
            width, height = (int(v) for v in args.get("target_size", (512, 512)))
            multiple = int(args.get("size_divisor") or 1)
            if args.get("keep_ratio", False):
                spec = InputSpec(
                    scale=(width, height), backend="cv2", rounding="half_even",
                    size_multiple=multiple,
                )  # fmt: skip
            else:
                spec = InputSpec(size=(width, height), backend="cv2", size_multiple=multiple)
        elif kind == "ResizeByLong":
            long_side = int(args["long_size"])
            spec = InputSpec(scale=(long_side, long_side), backend="cv2", rounding="half_even")
        elif kind == "Normalize":
            normalize = Normalize(**args)
        else:
            raise ModelLoadError(
                f"evaluation transform {kind!r} is not served (supported: Resize, "
                "ResizeByLong, Normalize); set val_dataset.transforms in config_options"
            )
    if spec is None:
        raise ModelLoadError(
            "the evaluation transforms have no Resize or ResizeByLong: PaddleSeg models "
            "return logits at the full input size, so segserve needs a bounded input; add "
            "one, e.g. config_options: {val_dataset: {transforms: [{type: Resize, "
            "target_size: [1024, 512]}, {type: Normalize}]}}"
        )
    return spec, normalize or Normalize()


def resolve_labels(config: ModelConfig, dic: dict[str, Any], num_classes: int) -> list[str]:
    dataset = (
        config.labels
        or _DATASET_LABELS.get(_dataset_type(dic) or "")
        or dataset_from_name(config.source)
    )
    names = DATASETS.get(dataset or "")
    if names is not None and len(names) == num_classes:
        return list(names)
    if config.labels:
        raise ModelLoadError(
            f"labels {config.labels!r} has {len(names or [])} classes; the model has {num_classes}"
        )
    return [f"class_{i}" for i in range(num_classes)]


class PaddleSegAdapter(SegmentationAdapter):
    framework = "paddleseg"

    def __init__(
        self,
        paddle: Any,
        device: DevicePlan,
        config: ModelConfig,
        input_spec: InputSpec,
        normalize: Any,
        *,
        model: Any = None,
        predictor: Any = None,
        test_config: dict[str, Any] | None = None,
    ) -> None:
        self.paddle = paddle
        self.device = device
        self.config = config
        self.input_spec = input_spec
        self.normalize = normalize
        self.model = model
        self.predictor = predictor
        self.test_config = test_config or {}
        self.labels = []
        self.weights: Weights = "random"
        self.weights_note = None
        self.checkpoint: str | None = None
        # Neither a predictor nor the dygraph tracer is meant to run two batches at once.
        self._lock = threading.Lock()

    @classmethod
    def cuda_available(cls) -> bool:
        import paddle

        return bool(paddle.device.is_compiled_with_cuda()) and paddle.device.cuda.device_count() > 0

    @classmethod
    def load(cls, config: ModelConfig, device: DevicePlan) -> PaddleSegAdapter:
        started = time.perf_counter()
        paddle = import_paddle(device)
        exported = exported_model_files(config.source)
        adapter: PaddleSegAdapter = (
            cls._load_exported(paddle, config, device, *exported)
            if exported
            else cls._load_dygraph(paddle, config, device)
        )
        logger.info(
            "model %r (%s) loaded with %s weights on %s (%d CPU threads) in %.1f s",
            config.name,
            "exported" if exported else "dygraph",
            adapter.weights,
            device.kind,
            device.cpu_threads,
            time.perf_counter() - started,
        )
        return adapter

    @classmethod
    def _load_dygraph(cls, paddle: Any, config: ModelConfig, device: DevicePlan) -> Any:
        dic = load_config_dict(config)
        spec, normalize = input_spec_and_normalize((dic.get("val_dataset") or {}).get("transforms"))
        model = build_model(dic, config.seed)
        adapter = cls(
            paddle, device, config, spec, normalize, model=model,
            test_config=dic.get("test_config"),
        )  # fmt: skip
        adapter.checkpoint = config.checkpoint

        def load() -> bool:
            if not config.checkpoint:
                raise ModelLoadError("no checkpoint (.pdparams path or URL) given")
            load_params(model, config.checkpoint)
            return True

        _, adapter.weights, adapter.weights_note = with_weights_policy(config, load)
        num_classes = int(getattr(model, "num_classes", 0) or adapter.warm_up())
        adapter.labels = resolve_labels(config, dic, num_classes)
        adapter.warm_up()
        return adapter

    @classmethod
    def _load_exported(
        cls, paddle: Any, config: ModelConfig, device: DevicePlan, program: Path, params: Path
    ) -> Any:
        import paddle.inference as paddle_infer
        import yaml

        deploy_file = program.parent / "deploy.yaml"
        deploy: dict[str, Any] = {}
        if deploy_file.is_file():
            deploy = (yaml.safe_load(deploy_file.read_text()) or {}).get("Deploy") or {}
        dic = copy.deepcopy(config.config_options)
        transforms = (dic.get("val_dataset") or {}).get("transforms") or deploy.get("transforms")
        spec, normalize = input_spec_and_normalize(transforms)
        predictor_config = paddle_infer.Config(str(program), str(params))
        if device.kind == "cuda":
            predictor_config.enable_use_gpu(256, 0)
        else:
            predictor_config.disable_gpu()
            # Paddle 3.3's oneDNN kernels fail on exported PIR programs
            # ("ConvertPirAttribute2RuntimeAttribute not support"); plain CPU kernels work.
            predictor_config.disable_onednn()
            predictor_config.set_cpu_math_library_num_threads(device.cpu_threads)
        try:
            predictor = paddle_infer.create_predictor(predictor_config)
        except Exception as e:
            message = " ".join(str(e).split())[:500]
            raise ModelLoadError(f"cannot load exported model {str(program)!r}: {message}") from e
        adapter = cls(paddle, device, config, spec, normalize, predictor=predictor)
        adapter.weights, adapter.weights_note = "pretrained", None
        adapter.checkpoint = str(params)
        try:
            num_classes = adapter.warm_up()
        except Exception as e:
            message = " ".join(str(e).split())[:500]
            raise ModelLoadError(f"exported model {str(program)!r} fails to run: {message}") from e
        adapter.labels = resolve_labels(config, dic, num_classes)
        return adapter

    def warm_up(self) -> int:
        """Run one blank image; the number of classes the model predicts."""
        width, height = self.input_spec.target_size(512, 512)
        blank = self.preprocess([np.zeros((height, width, 3), dtype=np.uint8)])
        with self._lock:
            scores = self.scores(blank)
        return int(scores.shape[1]) if scores.ndim == 4 else 0

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 RGB images of one size -> the NCHW float32 batch PaddleSeg's Normalize makes."""
        normalized = [self.normalize({"img": image})["img"] for image in images]
        return np.ascontiguousarray(np.stack(normalized).transpose(0, 3, 1, 2), dtype=np.float32)

    def scores(self, batch: np.ndarray) -> Any:
        """The model's output for a preprocessed batch: logits (N, C, H, W) or labels."""
        paddle = self.paddle
        if self.predictor is not None:
            handle = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
            handle.reshape(list(batch.shape))
            handle.copy_from_cpu(batch)
            self.predictor.run()
            output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])
            return paddle.to_tensor(output.copy_to_cpu())
        from paddleseg.core import infer

        if self.device.kind == "cpu":
            set_cpu_threads(self.device.cpu_threads)  # per thread: batches run in a pool
        test = self.test_config
        with paddle.no_grad():
            return infer.inference(
                self.model,
                paddle.to_tensor(batch),
                is_slide=bool(test.get("is_slide", False)),
                crop_size=test.get("crop_size"),
                stride=test.get("stride"),
            )

    def label_maps(self, scores: Any, output_sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Per image: bilinear logits to the output size then arg-max, as PaddleSeg's inference.

        An exported model that already returns labels is resized nearest-neighbour.
        """
        import paddle.nn.functional as F

        dtype = np.uint8 if len(self.labels) <= 256 else np.uint16
        results = []
        for row, (out_w, out_h) in enumerate(output_sizes):
            if scores.ndim == 3 or (scores.ndim == 4 and scores.shape[1] == 1):
                labels = scores[row].reshape(scores.shape[-2:]).numpy()
                results.append(resize_labels(labels.astype(dtype), out_w, out_h))
                continue
            logit = scores[row : row + 1]
            if tuple(logit.shape[-2:]) != (out_h, out_w):
                logit = F.interpolate(logit, [out_h, out_w], mode="bilinear")
            labels = self.paddle.argmax(logit, axis=1, dtype="int32")[0].numpy()
            results.append(labels.astype(dtype))
        return results

    def predict_same_size(
        self, images: Sequence[np.ndarray], output_sizes: Sequence[tuple[int, int]]
    ) -> list[np.ndarray]:
        batch = self.preprocess(images)
        with self._lock:
            scores = self.scores(batch)
            return self.label_maps(scores, output_sizes)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            {
                "source": self.config.source,
                "runtime": "paddle_inference" if self.predictor is not None else "dygraph",
                "checkpoint": self.checkpoint,
                "device": self.device.to_dict(),
                "precision": "fp32",
                "paddle_version": self.paddle.__version__,
            }
        )
        return info
