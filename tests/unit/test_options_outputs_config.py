"""Request options, output encoders and configuration validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.config import ConfigError, load_serve_config, parse_args
from deployments.pipeline.errors import ErrorKind, InvalidParameter, SegServeError, UnknownModel
from deployments.pipeline.options import parse_options
from deployments.pipeline.outputs import class_table, encode_label_png
from deployments.protocols.wire import decode_label_png

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"budget_ms": "-5"}, "positive"),
        ({"budget_ms": "0"}, "positive"),
        ({"budget_ms": "soon"}, "number"),
        ({"budget_ms": "nan"}, "positive"),
        ({"budget_ms": "1e12"}, "at most"),
        ({"outputs": "nope"}, "nope"),
        ({"outputs": "classes,nope"}, "nope"),
        ({"outputs": ","}, "choose from"),
        ({"mask_size": "huge"}, "huge"),
    ],
)
def test_bad_options_are_422_with_the_value_in_the_message(
    kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidParameter, match=fragment) as caught:
        parse_options(**kwargs)
    assert caught.value.kind.http_status == 422
    assert caught.value.kind.grpc_code_name == "INVALID_ARGUMENT"


def test_defaults_and_good_options() -> None:
    options = parse_options()
    assert options.model == "auto" and options.budget_ms is None
    assert options.outputs == {"classes", "mask"} and options.mask_size == "original"
    options = parse_options(model="b0", budget_ms="250", outputs="mask", mask_size="model")
    assert (options.model, options.budget_ms, options.mask_size) == ("b0", 250.0, "model")
    assert options.outputs == {"mask"}
    assert options.deadline(100.0) == pytest.approx(100.25)


def test_errors_survive_pickling_with_their_code() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(UnknownModel("no such model", code="custom")))
    assert isinstance(error, UnknownModel) and error.code == "custom"
    assert error.to_dict() == {"error": {"code": "custom", "message": "no such model"}}


def test_every_error_kind_maps_to_http_and_grpc() -> None:
    assert {k.http_status for k in ErrorKind} >= {400, 404, 413, 415, 422, 503, 504}
    assert SegServeError("x").kind.http_status == 500


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_png_round_trips_class_ids(dtype: type) -> None:
    top = 255 if dtype == np.uint8 else 1000
    labels: np.ndarray = np.random.default_rng(0).integers(0, top, (37, 53)).astype(dtype)
    decoded = decode_label_png(encode_label_png(labels))
    assert decoded.dtype == dtype and np.array_equal(decoded, labels)


def test_class_table_is_sorted_and_adds_up() -> None:
    labels = np.array([[0, 0, 2, 2], [2, 2, 2, 5]], dtype=np.uint8)
    names = ["wall", "building", "sky", "floor", "tree", "ceiling"]
    table = class_table(labels, 8, 4, names)
    assert [(row.id, row.name, row.pixels) for row in table] == [
        (2, "sky", 20),
        (0, "wall", 8),
        (5, "ceiling", 4),
    ]
    assert sum(row.fraction for row in table) == pytest.approx(1.0)


def test_the_shipped_serve_config_validates() -> None:
    args = load_serve_config(REPO / "serve_config.yaml")
    assert args.models[0].source == "nvidia/segformer-b0-finetuned-ade-512-512"
    assert args.models[0].weights == "auto"
    assert args.default_model == args.models[0].name


def minimal(**model: object) -> dict[str, Any]:
    return {"models": [{"name": "m", "framework": "hf_segformer", "source": "x", **model}]}


def test_unknown_keys_are_errors_naming_the_key_path() -> None:
    args = minimal(batching={"max_batch_sise": 4})
    with pytest.raises(ConfigError, match=r"models\.0\.batching\.max_batch_sise"):
        parse_args(args)
    with pytest.raises(ConfigError, match=r"gateway\.limit"):
        parse_args({**minimal(), "gateway": {"limit": {}}})


def test_config_consistency_checks() -> None:
    with pytest.raises(ConfigError, match="repeated: m"):
        parse_args({"models": minimal()["models"] * 2})
    with pytest.raises(ConfigError, match="default_model"):
        parse_args({**minimal(), "gateway": {"default_model": "other"}})
    with pytest.raises(ConfigError, match=r"models\.0\.weights"):
        parse_args(minimal(weights="maybe"))
    with pytest.raises(ConfigError, match=r"models\.0\.name"):
        parse_args({"models": [{"name": "auto", "framework": "hf_segformer", "source": "x"}]})


# ---------------------------------------------------------------- drawn outputs (issue 15)


def test_drawn_output_options_parse_from_strings_and_numbers() -> None:
    from deployments.pipeline.options import DrawOptions

    options = parse_options(
        outputs="contours, rle,overlay",
        min_area="0.01",
        simplify=2,
        max_classes="3",
        alpha="0.25",
        overlay_format="JPG",
        legend="yes",
    )
    assert options.outputs == {"contours", "rle", "overlay"}
    assert options.draw == DrawOptions(
        min_area=0.01, simplify=2.0, max_classes=3, alpha=0.25, overlay_format="jpeg", legend=True
    )
    # Unset options stay unset: the service fills in gateway.outputs' defaults.
    assert parse_options(outputs="overlay").draw == DrawOptions()
    assert parse_options(legend=False, min_area="").draw == DrawOptions(legend=False)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"min_area": "1.5"}, "min_area must be between 0 and 1, got 1.5"),
        ({"min_area": "tiny"}, "min_area must be a number"),
        ({"simplify": "-1"}, "simplify must be between 0"),
        ({"simplify": "inf"}, "simplify must be between 0"),
        ({"max_classes": "2.5"}, "max_classes must be a whole number"),
        ({"max_classes": "100000"}, "max_classes must be between 1 and 65536"),
        ({"alpha": "-0.1"}, "alpha must be between 0 and 1"),
        ({"overlay_format": "tiff"}, "overlay_format must be one of jpeg, jpg, png"),
        ({"legend": "sometimes"}, "legend must be true or false"),
        ({"outputs": "overlay,heatmap"}, "'heatmap'"),
    ],
)
def test_bad_drawn_output_options_are_422(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_options(**kwargs)
    assert fragment in caught.value.message
    assert caught.value.kind.http_status == 422


def test_outputs_and_image_contract_config() -> None:
    args = parse_args(
        {
            **minimal(),
            "gateway": {
                "outputs": {"overlay_max_pixels": 1_000_000, "overlay_format": "png"},
                "image": {"max_segments": 3, "min_contour_pixels": 500, "budget_ms": 5000},
            },
        }
    )
    assert args.gateway.outputs.overlay_max_pixels == 1_000_000
    assert args.gateway.outputs.overlay_format == "png"
    rules = args.gateway.image.rules()
    assert (rules.max_segments, rules.min_contour_pixels) == (3, 500)
    assert rules.min_segment_fraction == 0.05 and rules.categories == ("photo",)
    # The defaults are those of IMAGE's own segmentation preprocessor.
    from deployments.pipeline.image_contract import IMAGE_MMSEMSEG_RULES

    assert parse_args(minimal()).gateway.image.rules() == IMAGE_MMSEMSEG_RULES
    assert parse_args(minimal()).gateway.image.budget_ms < 15_000  # the orchestrator's timeout


@pytest.mark.parametrize(
    ("gateway", "path"),
    [
        ({"outputs": {"overlay_format": "gif"}}, r"gateway\.outputs\.overlay_format"),
        ({"outputs": {"overlay_alpha": 2}}, r"gateway\.outputs\.overlay_alpha"),
        ({"outputs": {"overlay_max_pixel": 10}}, r"gateway\.outputs\.overlay_max_pixel"),
        ({"image": {"name": "not a name"}}, r"gateway\.image"),
        ({"image": {"min_segment_fraction": 5}}, r"gateway\.image\.min_segment_fraction"),
        ({"image": {"budget_ms": 0}}, r"gateway\.image\.budget_ms"),
    ],
)
def test_bad_outputs_and_image_config_name_the_key(gateway: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=path):
        parse_args({**minimal(), "gateway": gateway})
