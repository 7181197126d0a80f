"""The SegFormer adapter: loading paths, weights policies, and parity with HuggingFace."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import SegformerForSemanticSegmentation

from deployments.adapters.bilinear_argmax import candidate_classes, upsample_argmax
from deployments.adapters.device import plan_device
from deployments.adapters.hf_segformer import HFSegformerAdapter, compiled
from deployments.config import LimitsConfig, ModelConfig
from deployments.pipeline.errors import ModelLoadError
from deployments.pipeline.imaging import decode_image, fit_within, resize_labels
from tests.images import encode, scene

CPU = plan_device(0, 2, None)


def load(source: str | Path, weights: str = "pretrained", **extra: object) -> HFSegformerAdapter:
    config = ModelConfig.model_validate(
        {"name": "m", "framework": "hf_segformer", "source": str(source), "weights": weights}
        | extra
    )
    return HFSegformerAdapter.load(config, CPU)


@pytest.fixture(scope="module")
def tiny(tiny_segformer_dir: Path) -> HFSegformerAdapter:
    return load(tiny_segformer_dir)


def test_save_pretrained_directory_loads_as_pretrained(tiny: HFSegformerAdapter) -> None:
    assert tiny.weights == "pretrained" and tiny.weights_note is None
    assert tiny.input_spec.size == (128, 128)  # from the saved preprocessor config
    assert len(tiny.labels) == 150 and tiny.labels[:3] == ["wall", "building", "sky"]


def test_served_labels_equal_the_model_on_the_adapters_tensor(
    tiny: HFSegformerAdapter, tiny_segformer_dir: Path
) -> None:
    reference = SegformerForSemanticSegmentation.from_pretrained(tiny_segformer_dir).eval()
    images = [scene(128, 128, seed) for seed in range(3)]
    sizes = [(128, 128), (200, 150), (64, 40)]
    served = tiny.predict_batch(images, sizes)
    with torch.inference_mode():
        logits = reference(pixel_values=tiny.preprocess(images)).logits
        for row, (width, height) in enumerate(sizes):
            upsampled = F.interpolate(
                logits[row : row + 1], size=(height, width), mode="bilinear", align_corners=False
            )
            expected = upsampled[0].argmax(0).numpy()
            assert np.array_equal(served[row], expected)  # 100 % of pixels
    assert len(np.unique(served[1])) > 3  # a real map, not one class


def hf_reference(directory: Path, image: Image.Image) -> np.ndarray:
    """HuggingFace's own pipeline: processor + model + post_process at the original size."""
    try:
        from transformers import SegformerImageProcessorPil as Processor
    except ImportError:
        from transformers import SegformerImageProcessor as Processor  # type: ignore[assignment]
    processor = Processor.from_pretrained(directory)
    model = SegformerForSemanticSegmentation.from_pretrained(directory).eval()
    inputs = processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    (labels,) = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(image.height, image.width)]
    )
    result: np.ndarray = labels.numpy()
    return result


@pytest.mark.parametrize(("width", "height"), [(300, 200), (97, 311), (511, 500)])
def test_served_pipeline_agrees_with_the_hf_reference_pipeline(
    tiny: HFSegformerAdapter, tiny_segformer_dir: Path, width: int, height: int
) -> None:
    data = encode(scene(width, height, seed=width), "PNG")
    decoded = decode_image(data, tiny.input_spec, LimitsConfig().image_limits())
    label_size = fit_within(width, height, 512 * 512)
    (labels,) = tiny.predict_batch([decoded.pixels], [label_size])
    served = resize_labels(labels, width, height)
    expected = hf_reference(tiny_segformer_dir, Image.open(__import__("io").BytesIO(data)))
    assert served.shape == expected.shape == (height, width)
    assert (served == expected).mean() >= 0.999


def test_batch_results_equal_single_results(tiny: HFSegformerAdapter) -> None:
    images = [scene(128, 128, seed) for seed in range(5)]
    batched = tiny.predict_batch(images, [(90, 70)] * 5)
    for image, labels in zip(images, batched, strict=True):
        assert np.array_equal(tiny.predict_batch([image], [(90, 70)])[0], labels)


def test_chunked_upsample_argmax_equals_the_full_one() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 9, 13, generator=generator)
    logits[7] = logits[30]  # exact ties go to the lower class id, as argmax does
    full = F.interpolate(logits[None], size=(50, 31), mode="bilinear", align_corners=False)
    expected = full[0].argmax(0)
    assert torch.equal(upsample_argmax(logits, 50, 31, torch.int64), expected)


def test_missing_directory_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_directory_without_weights(tiny_segformer_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "config-only"
    partial.mkdir()
    shutil.copy(tiny_segformer_dir / "config.json", partial)
    with pytest.raises(ModelLoadError, match="config-only"):
        load(partial, "pretrained")
    fallback = load(partial, "auto")  # the config is enough to build it with random weights
    assert fallback.weights == "random" and "pretrained weights unavailable" in (
        fallback.weights_note or ""
    )
    assert len(fallback.labels) == 150


def test_hub_id_offline_pretrained_fails_and_auto_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = "nvidia/segformer-b0-finetuned-ade-512-512"
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load(source, "pretrained")
    adapter = load(source, "auto")
    assert adapter.weights == "random" and "HF_HUB_OFFLINE" in (adapter.weights_note or "")
    assert adapter.describe()["architecture"] == "b0"
    assert adapter.input_spec.size == (512, 512) and len(adapter.labels) == 150


def test_random_weights_by_variant_name_and_label_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    b1 = load("nvidia/segformer-b1-finetuned-cityscapes-1024-1024", "random")
    assert b1.weights == "random" and b1.describe()["architecture"] == "b1"
    assert b1.labels[:2] == ["road", "sidewalk"] and len(b1.labels) == 19
    b2 = load("some/custom-model", "random", architecture="b2", labels="ade20k")
    assert b2.describe()["architecture"] == "b2"
    with pytest.raises(ModelLoadError, match="b0, b1, b2, b3, b4, b5"):
        load("some/custom-model", "random")


def test_random_weights_are_the_same_in_every_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = scene(512, 512)
    first = load("nvidia/mit-b0", "random", labels="ade20k").predict_batch([image], [(64, 64)])
    again = load("nvidia/mit-b0", "random", labels="ade20k").predict_batch([image], [(64, 64)])
    assert np.array_equal(first[0], again[0])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(1, 70),
    st.integers(1, 70),
    st.integers(0, 2**16),
    st.floats(0.1, 20),
)
def test_pruned_upsample_argmax_is_exact(
    classes: int, h: int, w: int, out_h: int, out_w: int, seed: int, spread: float
) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(classes, h, w, generator=generator)
    logits[0] += spread  # one dominant class, as trained models have: most get pruned
    full = F.interpolate(logits[None], size=(out_h, out_w), mode="bilinear", align_corners=False)
    expected = full[0].argmax(0)
    assert torch.equal(upsample_argmax(logits, out_h, out_w, torch.int64), expected)
    assert set(expected.unique().tolist()) <= set(candidate_classes(logits).tolist())


def test_load_runs_no_image_and_warm_up_runs_one(tiny_segformer_dir: Path) -> None:
    """The model server warms a replica up once (adapter.warm_up()); load() runs nothing."""
    calls: list[str] = []

    def count(module: torch.nn.Module, args: object, output: object) -> None:
        if isinstance(module, SegformerForSemanticSegmentation):
            calls.append("forward")

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        adapter = load(tiny_segformer_dir)
        assert calls == []
        adapter.warm_up()
        assert calls == ["forward"]
    finally:
        hook.remove()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._inductor's imports
def test_compile_keeps_its_graphs_in_the_configured_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted replica finds what the last one compiled (nothing compiles until called)."""
    import os

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset-by-the-test")  # restored after
    compiled(torch.nn.Identity(), str(tmp_path / "inductor"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
