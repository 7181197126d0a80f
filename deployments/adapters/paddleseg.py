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
the input must be bounded before the model sees it. The config translation
is in ``paddleseg_config.py``; this module builds and runs the model.

Paddle never shares a process with PyTorch: this module imports no torch, and
each model runs in its own replica process. Paddle sets ``OMP_NUM_THREADS=1``
at import unless it is set, so the replica sets it (and Paddle's math-library
threads) to the CPUs Ray gave it before importing Paddle.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from deployments.adapters.base import WARM_UP_IMAGE_SIZE, SegmentationAdapter, Weights
from deployments.adapters.device import DevicePlan
from deployments.adapters.loading import check_weights, fetch_url, with_weights_policy
from deployments.adapters.paddleseg_config import (
    exported_model_files,
    exported_transforms,
    input_spec_and_normalize,
    load_config_dict,
    model_section,
    resolve_labels,
)
from deployments.config import ModelConfig
from deployments.pipeline.errors import ModelLoadError
from deployments.pipeline.imaging import InputSpec, resize_labels

logger = logging.getLogger("segserve.adapters.paddleseg")

T = TypeVar("T")


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


def exported_num_classes(paddle: Any, program: Path) -> int | None:
    """The class count an exported PIR program's output declares (0: it outputs labels).

    Read from the program file (tens of milliseconds, nothing run); None when it
    cannot tell: a legacy ``.pdmodel``, a dynamic class axis, or a Paddle whose
    (internal) program reader differs.
    """
    if program.suffix != ".json":
        return None
    try:
        from paddle.static.pir_io import get_pir_feed_and_fetch

        parsed = paddle.static.Program()
        paddle.base.core.deserialize_pir_program(str(program), parsed)
        _, outputs = get_pir_feed_and_fetch(parsed)  # type: ignore[no-untyped-call]
        shape = list(outputs[0].shape)
    except Exception as e:
        logger.info("cannot read the output shape of %s (%s); probing it", program, e)
        return None
    if len(shape) != 4:
        return 0
    return int(shape[1]) if shape[1] > 0 else None


def build_model(dic: dict[str, Any], seed: int) -> Any:
    """The dygraph model from the config's ``model`` section, with random weights."""
    import paddle
    from paddleseg.cvlibs import manager
    from paddleseg.cvlibs.builder import Builder

    model_cfg = model_section(dic)
    builder = Builder(None, comp_list=[manager.MODELS, manager.BACKBONES])
    paddle.seed(seed)
    try:
        model = builder.build_component(model_cfg)
    except Exception as e:
        message = " ".join(str(e).split())
        raise ModelLoadError(f"cannot build PaddleSeg model {model_cfg['type']}: {message}") from e
    model.eval()
    return model


def fetch_params(url: str) -> Path:
    """A ``.pdparams`` URL, from PaddleSeg's cache (``$SEG_HOME``) or downloaded there."""
    from paddleseg.utils import download_pretrained_model
    from paddleseg.utils.env import seg_env

    parts = url.rstrip("/").split("/")
    cached = Path(seg_env.PRETRAINED_MODEL_HOME) / parts[-2] / parts[-1]
    # PaddleSeg's download, which also unpacks archives, writes where it looks.
    return fetch_url(
        url, cached, what="parameters", download=lambda: Path(download_pretrained_model(url))
    )


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
        self.program: Path | None = None
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
        # The class count the model was built with: no forward pass needed to learn it.
        num_classes = int(getattr(model, "num_classes", 0) or model_section(dic)["num_classes"])
        adapter.labels = resolve_labels(config, dic, num_classes)
        return adapter

    @classmethod
    def _load_exported(
        cls, paddle: Any, config: ModelConfig, device: DevicePlan, program: Path, params: Path
    ) -> Any:
        import paddle.inference as paddle_infer

        spec, normalize = input_spec_and_normalize(exported_transforms(config, program))
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
        adapter.program = program
        num_classes = exported_num_classes(paddle, program)
        if num_classes is None:
            # The program does not say (a legacy .pdmodel, or a dynamic class axis): one
            # probe pass, the only model run load() makes, and only for such programs.
            num_classes = adapter._run_exported(adapter._probe_classes)
        adapter.labels = resolve_labels(config, copy.deepcopy(config.config_options), num_classes)
        return adapter

    def warm_up(self) -> None:
        if self.predictor is None:
            super().warm_up()
        else:  # an exported model's first run is where a broken program shows itself
            self._run_exported(super().warm_up)

    def _probe_classes(self) -> int:
        """Run one blank image; the number of classes the model predicts (0: it gives labels)."""
        width, height = self.input_spec.target_size(*WARM_UP_IMAGE_SIZE)
        blank = self.preprocess([np.zeros((height, width, 3), dtype=np.uint8)])
        with self._lock:
            scores = self.scores(blank)
        return int(scores.shape[1]) if scores.ndim == 4 else 0

    def _run_exported(self, run: Callable[[], T]) -> T:
        """``run()``, with a failure of the exported program reported as a load error."""
        try:
            return run()
        except Exception as e:
            message = " ".join(str(e).split())[:500]
            raise ModelLoadError(
                f"exported model {str(self.program)!r} fails to run: {message}"
            ) from e

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
                "runtime": "paddle_inference" if self.predictor is not None else "dygraph",
                "checkpoint": self.checkpoint,
                "paddle_version": self.paddle.__version__,
            }
        )
        return info
