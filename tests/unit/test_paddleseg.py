"""The PaddleSeg adapter: .pdparams and exported models, parity with PaddleSeg, load failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("paddleseg", reason="the paddle extra is not installed")

import paddle
from paddleseg.core import infer
from paddleseg.transforms import Resize, ResizeByLong

from deployments.adapters.paddleseg import PaddleSegAdapter
from deployments.adapters.paddleseg_config import input_spec_and_normalize
from deployments.config import LimitsConfig, ModelConfig
from deployments.pipeline.errors import ModelLoadError
from deployments.pipeline.imaging import decode_image, fit_within, resize_labels
from tests.images import encode, scene
from tests.paddle_models import (
    EXPORTED_OPTIONS,
    PPLITESEG_OPTIONS,
    export_model,
    load,
    ppliteseg_config,
    save_pdparams,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("paddleseg")


@pytest.fixture(scope="module")
def pdparams(workdir: Path) -> Path:
    return save_pdparams(workdir / "ppliteseg.pdparams", seed=7)


@pytest.fixture(scope="module")
def dygraph(pdparams: Path) -> PaddleSegAdapter:
    return load(ppliteseg_config(checkpoint=str(pdparams), weights="pretrained"))


@pytest.fixture(scope="module")
def exported_dir(pdparams: Path, workdir: Path) -> Path:
    return export_model(pdparams, workdir / "exported")


@pytest.fixture(scope="module")
def exported(exported_dir: Path) -> PaddleSegAdapter:
    return load(exported_config(str(exported_dir)))


def exported_config(source: str, **extra: Any) -> ModelConfig:
    settings = {
        "name": "exported",
        "framework": "paddleseg",
        "source": source,
        "config_options": EXPORTED_OPTIONS,
    }
    return ModelConfig.model_validate(settings | extra)


def gateway_pixels(adapter: PaddleSegAdapter, image: np.ndarray) -> np.ndarray:
    """What the gateway hands the replica: decoded and resized to the input spec."""
    limits = LimitsConfig().image_limits()
    return decode_image(encode(image, "PNG"), adapter.input_spec, limits).pixels


def served(adapter: PaddleSegAdapter, image: np.ndarray) -> np.ndarray:
    """The gateway + replica path: decode and resize, predict, nearest resize back."""
    height, width = image.shape[:2]
    label_size = fit_within(width, height, 512 * 512)
    (labels,) = adapter.predict_batch([gateway_pixels(adapter, image)], [label_size])
    return resize_labels(labels, width, height)


def paddleseg_inference(model: Any, batch: np.ndarray, height: int, width: int) -> np.ndarray:
    """PaddleSeg's own inference: forward, logits resized back to the image, arg-max."""
    pred, _ = infer.inference(
        model, paddle.to_tensor(batch), trans_info=[("resize", (height, width))]
    )
    return np.asarray(pred.numpy()[0, 0])


def predictor_inference(
    exported_dir: Path, batch: np.ndarray, height: int, width: int
) -> np.ndarray:
    """The exported model on Paddle Inference's predictor, post-processed as PaddleSeg does."""
    import paddle.inference as paddle_infer

    config = paddle_infer.Config(
        str(exported_dir / "model.json"), str(exported_dir / "model.pdiparams")
    )
    config.disable_gpu()
    config.disable_onednn()
    predictor = paddle_infer.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(batch)
    predictor.run()
    logit = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    resized = infer.reverse_transform(
        paddle.to_tensor(logit), [("resize", (height, width))], "bilinear"
    )
    return np.asarray(paddle.argmax(resized, axis=1).numpy()[0])


def test_loads_pdparams_written_by_paddle_save(dygraph: PaddleSegAdapter, pdparams: Path) -> None:
    assert dygraph.weights == "pretrained" and dygraph.weights_note is None
    assert dygraph.labels[:3] == ["road", "sidewalk", "building"] and len(dygraph.labels) == 19
    saved = paddle.load(str(pdparams))
    for key, value in dygraph.model.state_dict().items():
        assert np.array_equal(value.numpy(), saved[key].numpy()), key
    info = dygraph.describe()
    assert info["framework"] == "paddleseg" and info["runtime"] == "dygraph"
    assert info["checkpoint"] == str(pdparams)


@pytest.mark.parametrize(("width", "height"), [(300, 200), (257, 401)])
def test_parity_with_paddleseg_inference_on_the_same_tensor(
    dygraph: PaddleSegAdapter, width: int, height: int
) -> None:
    image = scene(width, height, seed=width)
    batch = dygraph.preprocess([gateway_pixels(dygraph, image)])
    ours = served(dygraph, image)
    theirs = paddleseg_inference(dygraph.model, batch, height, width)
    assert ours.shape == theirs.shape == (height, width)
    assert np.array_equal(ours, theirs)  # 100 % of pixels
    assert len(np.unique(ours)) > 3


@pytest.mark.parametrize(("width", "height"), [(300, 200), (190, 330)])
def test_exported_model_parity_with_predictor_and_dygraph(
    exported: PaddleSegAdapter,
    exported_dir: Path,
    dygraph: PaddleSegAdapter,
    width: int,
    height: int,
) -> None:
    image = scene(width, height, seed=height)
    batch = exported.preprocess([gateway_pixels(exported, image)])
    ours = served(exported, image)
    assert np.array_equal(ours, predictor_inference(exported_dir, batch, height, width))
    assert np.array_equal(ours, paddleseg_inference(dygraph.model, batch, height, width))
    assert len(np.unique(ours)) > 3


def test_exported_model_describes_itself(exported: PaddleSegAdapter, exported_dir: Path) -> None:
    info = exported.describe()
    assert info["runtime"] == "paddle_inference" and info["framework"] == "paddleseg"
    assert exported.labels[0] == "road" and len(exported.labels) == 19  # from the dataset type
    assert exported.input_spec == load(ppliteseg_config()).input_spec


def test_exported_model_by_path_prefix(exported_dir: Path) -> None:
    adapter = load(exported_config(str(exported_dir / "model")))
    assert adapter.predictor is not None


def test_mixed_size_batch_equals_each_image_alone(dygraph: PaddleSegAdapter) -> None:
    images = [
        gateway_pixels(dygraph, scene(w, h, seed=w + h))
        for w, h in [(300, 200), (200, 300), (600, 400), (640, 480)]
    ]
    sizes = [(int(i.shape[1]), int(i.shape[0])) for i in images]
    assert len(set(sizes)) < len(sizes) < 2 * len(set(sizes))  # some shapes shared, some not
    together = dygraph.predict_batch(images, sizes)
    for image, size, labels in zip(images, sizes, together, strict=True):
        (alone,) = dygraph.predict_batch([image], [size])
        assert np.array_equal(labels, alone)


@pytest.mark.parametrize(
    ("step", "sizes"),
    [
        ({"type": "Resize", "target_size": [512, 512], "keep_ratio": True, "size_divisor": 32},
         [(640, 480), (333, 1001), (5795, 3796), (15, 3)]),
        ({"type": "Resize", "target_size": [1024, 512], "keep_ratio": True},
         [(2048, 1024), (1000, 999), (3, 15)]),
        ({"type": "Resize", "target_size": [1024, 512]}, [(640, 480)]),
        ({"type": "ResizeByLong", "long_size": 300}, [(640, 480), (101, 333)]),
    ],
)  # fmt: skip
def test_input_sizes_match_paddleseg_transforms(
    step: dict[str, Any], sizes: list[tuple[int, int]]
) -> None:
    spec, _ = input_spec_and_normalize([step, {"type": "Normalize"}])
    args = {k: v for k, v in step.items() if k != "type"}
    transform = Resize(**args) if step["type"] == "Resize" else ResizeByLong(**args)
    for width, height in sizes:
        data = transform({"img": np.zeros((height, width, 3), np.float32), "trans_info": []})
        assert spec.target_size(width, height) == (data["img"].shape[1], data["img"].shape[0])


def test_missing_pdparams_fails_at_start_naming_the_file(workdir: Path) -> None:
    missing = workdir / "nowhere" / "model.pdparams"
    with pytest.raises(
        ModelLoadError, match=r"parameters file .*nowhere/model\.pdparams.* not exist"
    ):
        load(ppliteseg_config(checkpoint=str(missing), weights="pretrained"))
    fallback = load(ppliteseg_config(checkpoint=str(missing), weights="auto"))
    assert fallback.weights == "random" and "nowhere/model.pdparams" in str(fallback.weights_note)


def test_mismatched_pdparams_fails_naming_the_weight(workdir: Path) -> None:
    other = save_pdparams(workdir / "narrow.pdparams", seg_head_inter_chs=[16, 32, 32])
    with pytest.raises(ModelLoadError, match=r"does not match the config: \d+ shape mismatches"):
        load(ppliteseg_config(checkpoint=str(other), weights="pretrained"))


def test_unknown_model_class_fails_with_close_names() -> None:
    with pytest.raises(
        ModelLoadError, match=r"unknown PaddleSeg model class 'PPLiteSge'; did you mean PPLiteSeg"
    ):
        load(ppliteseg_config(source="PPLiteSge"))


def test_unknown_backbone_fails_naming_it() -> None:
    options = {
        **PPLITESEG_OPTIONS,
        "model": {**PPLITESEG_OPTIONS["model"], "backbone": {"type": "STDC9"}},
    }
    with pytest.raises(ModelLoadError, match=r"cannot build PaddleSeg model PPLiteSeg.*STDC9"):
        load(ppliteseg_config(config_options=options))


def test_broken_exported_models_fail_at_start(exported_dir: Path, workdir: Path) -> None:
    truncated = workdir / "truncated"
    truncated.mkdir()
    (truncated / "model.json").write_bytes((exported_dir / "model.json").read_bytes())
    (truncated / "model.pdiparams").write_bytes(
        (exported_dir / "model.pdiparams").read_bytes()[:50_000]
    )
    with pytest.raises(ModelLoadError, match=r"cannot load exported model .*truncated/model\.json"):
        load(exported_config(str(truncated)))

    corrupt = workdir / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.json").write_text('{"program": ')
    (corrupt / "model.pdiparams").write_bytes((exported_dir / "model.pdiparams").read_bytes())
    with pytest.raises(
        ModelLoadError, match=r"cannot load exported model .*corrupt/model\.json.*parse"
    ):
        load(exported_config(str(corrupt)))

    no_params = workdir / "no_params"
    no_params.mkdir()
    (no_params / "model.json").write_bytes((exported_dir / "model.json").read_bytes())
    with pytest.raises(ModelLoadError, match=r"needs a program .* and its parameters"):
        load(exported_config(str(no_params)))


def test_a_config_file_with_base_and_label_set(workdir: Path) -> None:
    import yaml

    base = workdir / "_base_" / "cityscapes_small.yml"
    base.parent.mkdir(exist_ok=True)
    base.write_text(
        yaml.safe_dump({"val_dataset": PPLITESEG_OPTIONS["val_dataset"], "batch_size": 2})
    )
    config_file = workdir / "ppliteseg_small.yml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "_base_": "_base_/cityscapes_small.yml",
                "model": {"type": "PPLiteSeg", **PPLITESEG_OPTIONS["model"]},
            }
        )
    )
    adapter = load(
        ModelConfig(name="f", framework="paddleseg", source=str(config_file), weights="random")
    )
    assert adapter.labels[-1] == "bicycle" and adapter.input_spec.scale == (256, 128)
    assert adapter.weights == "random" and adapter.weights_note == "configured with weights: random"
    with pytest.raises(ModelLoadError, match=r"config file .*absent\.yml.* does not exist"):
        load(ModelConfig(name="f", framework="paddleseg", source=str(workdir / "absent.yml")))


def test_unbounded_or_unsupported_transforms_are_refused() -> None:
    unbounded = {
        **PPLITESEG_OPTIONS,
        "val_dataset": {"type": "Cityscapes", "transforms": [{"type": "Normalize"}]},
    }
    with pytest.raises(ModelLoadError, match=r"no Resize .* bounded input"):
        load(ppliteseg_config(config_options=unbounded))
    with pytest.raises(ModelLoadError, match=r"transform 'RandomFlip' is not served"):
        input_spec_and_normalize([{"type": "RandomFlip"}])


def test_labels_mismatching_the_model_fail() -> None:
    with pytest.raises(ModelLoadError, match=r"labels 'ade20k' has 150 classes; the model has 19"):
        load(ppliteseg_config(labels="ade20k"))


def count_model_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of every model run (PaddleSegAdapter.scores, which still runs the model)."""
    runs: list[int] = []
    real_scores = PaddleSegAdapter.scores

    def scores(self: PaddleSegAdapter, batch: np.ndarray) -> Any:
        runs.append(int(batch.shape[0]))
        return real_scores(self, batch)

    monkeypatch.setattr(PaddleSegAdapter, "scores", scores)
    return runs


def test_load_runs_no_image_and_warm_up_runs_one(
    monkeypatch: pytest.MonkeyPatch, pdparams: Path, exported_dir: Path
) -> None:
    """Dygraph and exported: the class count comes from the config or the program, not a run."""
    runs = count_model_runs(monkeypatch)
    dygraph = load(ppliteseg_config(checkpoint=str(pdparams), weights="pretrained"))
    exported = load(exported_config(str(exported_dir)))
    assert runs == []
    assert len(dygraph.labels) == len(exported.labels) == 19
    dygraph.warm_up()
    exported.warm_up()
    assert runs == [1, 1]
