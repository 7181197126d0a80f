"""Small real PaddleSeg models for tests: real classes, random weights, saved and exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployments.adapters.device import plan_device
from deployments.adapters.paddleseg import PaddleSegAdapter, build_model
from deployments.adapters.paddleseg_config import load_config_dict
from deployments.config import ModelConfig

#: PP-LiteSeg-T (STDC1) for Cityscapes at a small keep-ratio size (fast on CPU).
PPLITESEG_OPTIONS: dict[str, Any] = {
    "model": {
        "backbone": {"type": "STDC1"},
        "arm_out_chs": [32, 64, 128],
        "seg_head_inter_chs": [32, 64, 64],
    },
    "val_dataset": {
        "type": "Cityscapes",
        "transforms": [
            {"type": "Resize", "target_size": [256, 128], "keep_ratio": True},
            {"type": "Normalize"},
        ],
    },
}
#: What an exported model needs besides its files: the evaluation transforms.
EXPORTED_OPTIONS: dict[str, Any] = {"val_dataset": PPLITESEG_OPTIONS["val_dataset"]}


def ppliteseg_config(**extra: Any) -> ModelConfig:
    settings = {
        "name": "ppliteseg",
        "framework": "paddleseg",
        "source": "PPLiteSeg",
        "weights": "random",
        "config_options": PPLITESEG_OPTIONS,
    }
    return ModelConfig.model_validate(settings | extra)


def save_pdparams(path: Path, seed: int = 7, **model_options: Any) -> Path:
    """A PP-LiteSeg's random parameters saved with paddle.save, as training writes them."""
    import paddle

    options = {**PPLITESEG_OPTIONS, "model": {**PPLITESEG_OPTIONS["model"], **model_options}}
    config = ppliteseg_config(config_options=options)
    model = build_model(load_config_dict(config), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    paddle.save(model.state_dict(), str(path))
    return path


def export_model(pdparams: Path, directory: Path) -> Path:
    """A PP-LiteSeg with these parameters exported with paddle.jit.save (model.json + .pdiparams).

    A fresh model is exported: to_static converts the layer it is given in place.
    """
    import paddle

    model = build_model(load_config_dict(ppliteseg_config()), seed=0)
    model.set_state_dict(paddle.load(str(pdparams)))
    spec = [paddle.static.InputSpec(shape=[None, 3, None, None], dtype="float32", name="x")]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(directory / "model"))
    return directory


def load(config: ModelConfig, cpus: float = 2) -> PaddleSegAdapter:
    return PaddleSegAdapter.load(config, plan_device(0, cpus, None))
