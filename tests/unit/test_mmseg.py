"""The MMSegmentation adapter: config names, checkpoints, missing ops, parity with mmseg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg", reason="the mmseg extra is not installed")

from deployments.adapters.device import plan_device
from deployments.adapters.mmseg import MMSegAdapter
from deployments.config import LimitsConfig, ModelConfig
from deployments.pipeline.errors import ModelLoadError
from deployments.pipeline.imaging import decode_image, fit_within, resize_labels
from tests.images import encode, scene

SEGFORMER = "segformer_mit-b0_8xb2-160k_ade20k-512x512"
UPERNET = "upernet_r50_4xb4-80k_ade20k-512x512"
# A small UPerNet: ResNet-18 backbone, narrow head, 512x128 test scale (fast on CPU).
SMALL_UPERNET = {
    "model.backbone.depth": 18,
    "model.decode_head.in_channels": [64, 128, 256, 512],
    "model.decode_head.channels": 64,
    "model.auxiliary_head.in_channels": 256,
    "model.auxiliary_head.channels": 64,
    "test_pipeline.1.scale": (512, 128),
}
SMALL_SEGFORMER = {"test_pipeline.1.scale": (1024, 256)}
CPU = plan_device(0, 2, None)


def load(source: str, weights: str = "random", **extra: object) -> MMSegAdapter:
    config = ModelConfig.model_validate(
        {"name": "m", "framework": "mmseg", "source": source, "weights": weights} | extra
    )
    return MMSegAdapter.load(config, CPU)


@pytest.fixture(scope="module")
def segformer() -> MMSegAdapter:
    return load(SEGFORMER, config_options=SMALL_SEGFORMER)


def served(adapter: MMSegAdapter, image: np.ndarray) -> np.ndarray:
    """The gateway + replica path: decode and resize, predict, nearest resize back."""
    decoded = decode_image(encode(image, "PNG"), adapter.input_spec, LimitsConfig().image_limits())
    label_size = fit_within(decoded.width, decoded.height, 512 * 512)
    (labels,) = adapter.predict_batch([decoded.pixels], [label_size])
    return resize_labels(labels, decoded.width, decoded.height)


def reference(adapter: MMSegAdapter, image: np.ndarray) -> np.ndarray:
    from mmseg.apis import inference_model

    result = inference_model(adapter.model, np.ascontiguousarray(image[..., ::-1]))  # BGR
    labels: np.ndarray = result.pred_sem_seg.data[0].cpu().numpy()
    return labels


def test_shipped_config_by_name_with_dataset_labels(segformer: MMSegAdapter) -> None:
    assert segformer.weights == "random"
    assert len(segformer.labels) == 150 and segformer.labels[:3] == ["wall", "building", "sky"]
    assert segformer.palette is not None and len(segformer.palette) == 150
    assert segformer.input_spec.scale == (1024, 256) and segformer.input_spec.backend == "cv2"
    assert segformer.describe()["framework"] == "mmseg"


@pytest.mark.parametrize(("width", "height"), [(300, 200), (257, 401)])
def test_segformer_parity_with_inference_model(
    segformer: MMSegAdapter, width: int, height: int
) -> None:
    image = scene(width, height, seed=width)
    ours, theirs = served(segformer, image), reference(segformer, image)
    assert ours.shape == theirs.shape == (height, width)
    assert (ours == theirs).mean() >= 0.999
    assert len(np.unique(ours)) > 3


def test_upernet_parity_with_inference_model() -> None:
    upernet = load(UPERNET, config_options=SMALL_UPERNET)
    image = scene(320, 240, seed=5)
    assert (served(upernet, image) == reference(upernet, image)).mean() >= 0.999


@pytest.mark.parametrize("which", ["segformer", "upernet"])
def test_same_preprocessed_tensor_gives_identical_labels(
    segformer: MMSegAdapter, which: str
) -> None:
    adapter = segformer if which == "segformer" else load(UPERNET, config_options=SMALL_UPERNET)
    image = scene(256, 192, seed=9)
    inputs, samples = adapter.batch_inputs([image])
    with torch.inference_mode():
        logits = adapter.model.inference(inputs, [s.metainfo for s in samples])
    expected = logits[0].argmax(0).numpy()  # the model's own scores, its own arg-max
    (ours,) = adapter.predict_batch([image], [(256, 192)])
    assert np.array_equal(ours, expected)


def test_mixed_size_batch_equals_each_alone(segformer: MMSegAdapter) -> None:
    spec = segformer.input_spec
    images = [
        scene(*spec.target_size(w, h), seed=w) for w, h in [(300, 500), (1024, 768), (640, 640)]
    ]
    sizes = [(img.shape[1], img.shape[0]) for img in images]
    together = segformer.predict_batch(images, sizes)
    for image, size, labels in zip(images, sizes, together, strict=True):
        assert np.array_equal(segformer.predict_batch([image], [size])[0], labels)


def test_wrong_config_name_names_close_configs() -> None:
    with pytest.raises(ModelLoadError, match="segformer_mit-b0_8xb2-160k_ade20k-512x512"):
        load("segformer_mit-b0_8xb2-160k_ade20k-512x51")
    with pytest.raises(ModelLoadError, match="no MMSegmentation config"):
        load("definitely/not_a_config")


def test_missing_checkpoint_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(SEGFORMER, "pretrained", checkpoint=str(tmp_path / "missing.pth"))


def test_a_model_needing_a_compiled_op_names_it() -> None:
    from deployments.adapters import mmcv_compat

    if mmcv_compat.has_compiled_ops():
        pytest.skip("the full mmcv is installed: CCNet builds")
    with pytest.raises(ModelLoadError, match=r"CrissCrossAttention.*full mmcv"):
        load("ccnet_r50-d8_4xb2-40k_cityscapes-512x1024")


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MMSegAdapter]:
    """Random weights saved with mmengine's checkpoint functions; numpy values in meta."""
    from mmengine.runner import save_checkpoint

    original = load(SEGFORMER, config_options=SMALL_SEGFORMER, seed=7)
    path = tmp_path_factory.mktemp("mmseg") / "segformer.pth"
    meta = {
        "dataset_meta": {"classes": tuple(original.labels), "palette": original.palette},
        "epoch": np.int64(3),
        "seed": np.array([7], dtype=np.int64),
        "mIoU": np.float64(0.0),
    }
    save_checkpoint({"state_dict": original.model.state_dict(), "meta": meta}, str(path))
    return path, original


def test_served_from_a_saved_checkpoint(saved_checkpoint: tuple[Path, MMSegAdapter]) -> None:
    path, original = saved_checkpoint
    loaded = load(SEGFORMER, "pretrained", checkpoint=str(path), config_options=SMALL_SEGFORMER)
    assert loaded.weights == "pretrained" and loaded.weights_note is None
    image = scene(200, 150, seed=1)
    assert np.array_equal(served(loaded, image), served(original, image))


def test_mismatched_checkpoint_fails_naming_the_mismatch(
    saved_checkpoint: tuple[Path, MMSegAdapter],
) -> None:
    path, _ = saved_checkpoint  # 150 ADE20K classes into a 19-class Cityscapes config
    with pytest.raises(ModelLoadError, match=r"does not match.*conv_seg"):
        load("segformer_mit-b0_8xb1-160k_cityscapes-1024x1024", "pretrained", checkpoint=str(path))


def test_auto_without_network_falls_back_to_random() -> None:
    adapter = load(SEGFORMER, "auto", config_options=SMALL_SEGFORMER, checkpoint="/nonexistent.pth")
    assert adapter.weights == "random" and "does not exist" in (adapter.weights_note or "")


def test_load_runs_no_image_and_warm_up_runs_one() -> None:
    """The model server warms a replica up once (adapter.warm_up()); load() runs nothing."""
    calls: list[str] = []

    def count(module: torch.nn.Module, args: object, output: object) -> None:
        calls.append(type(module).__name__)

    every_module = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        adapter = load(SEGFORMER, config_options=SMALL_SEGFORMER)
    finally:
        every_module.remove()
    assert calls == []  # not one module of the model ran
    backbone = adapter.model.backbone.register_forward_hook(count)
    try:
        adapter.warm_up()
    finally:
        backbone.remove()
    assert calls == [type(adapter.model.backbone).__name__]  # one pass


def test_a_checkpoint_url_is_downloaded_into_torch_hub_cache(
    saved_checkpoint: tuple[Path, MMSegAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.test_adapters_loading import serving

    path, original = saved_checkpoint
    monkeypatch.delenv("SEGSERVE_OFFLINE")  # only 127.0.0.1 is asked
    with serving(path.parent) as (base, asked):
        loaded = load(
            SEGFORMER,
            "pretrained",
            checkpoint=f"{base}/{path.name}",
            config_options=SMALL_SEGFORMER,
        )
    assert asked == [f"/{path.name}"] and loaded.weights == "pretrained"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / path.name
    assert cached.read_bytes() == path.read_bytes()
    image = scene(200, 150, seed=2)
    assert np.array_equal(served(loaded, image), served(original, image))
