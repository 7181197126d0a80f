"""PaddleSeg configuration -> what segserve serves: the model section, input spec, labels.

Translation only, no model is run here: a PaddleSeg config (a ``.yml`` with
``_base_`` files, or a registered model class name) merged with
``config_options``; the model section without ``pretrained`` downloads and with
``num_classes`` resolved; the evaluation transforms as the gateway's resize (an
:class:`InputSpec`) plus PaddleSeg's ``Normalize``; and the label names.

PaddleSeg's modules are imported inside the functions that need them: they
import Paddle.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

from deployments.adapters.labels import DATASETS, dataset_from_name
from deployments.config import ModelConfig
from deployments.pipeline.errors import ModelLoadError
from deployments.pipeline.imaging import InputSpec

#: PaddleSeg dataset classes whose label names segserve knows.
DATASET_LABELS = {"ADE20K": "ade20k", "Cityscapes": "cityscapes"}
_EXPORTED_PROGRAMS = (".json", ".pdmodel")  # PIR (Paddle 3) and legacy program files


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


def without_pretrained(component: Any) -> Any:
    """A component config with every ``pretrained`` URL dropped (no backbone downloads)."""
    if isinstance(component, dict):
        return {
            key: without_pretrained(value)
            for key, value in component.items()
            if key != "pretrained"
        }
    if isinstance(component, list):
        return [without_pretrained(item) for item in component]
    return component


def model_section(dic: dict[str, Any]) -> dict[str, Any]:
    """The config's ``model`` section, ready to build: a known class, ``num_classes`` set.

    ``num_classes`` comes from the section or, as PaddleSeg does, from the
    dataset class's ``NUM_CLASSES``; ``pretrained`` URLs are dropped.
    """
    from paddleseg.cvlibs import manager

    model_cfg: dict[str, Any] = without_pretrained(copy.deepcopy(dic.get("model") or {}))
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
        dataset = dataset_type(dic)
        dataset_class = manager.DATASETS.components_dict.get(dataset) if dataset else None
        if dataset_class is None or not hasattr(dataset_class, "NUM_CLASSES"):
            raise ModelLoadError(
                f"model {model_type}: set model.num_classes (no dataset class gives it)"
            )
        model_cfg["num_classes"] = int(dataset_class.NUM_CLASSES)
    return model_cfg


def dataset_type(dic: dict[str, Any]) -> str | None:
    """The PaddleSeg dataset class the config evaluates on (or trains on)."""
    for section in ("val_dataset", "train_dataset"):
        value = (dic.get(section) or {}).get("type")
        if value:
            return str(value)
    return None


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


def exported_transforms(config: ModelConfig, program: Path) -> list[dict[str, Any]] | None:
    """An exported model's evaluation transforms: config_options', else its ``deploy.yaml``'s."""
    import yaml

    deploy_file = program.parent / "deploy.yaml"
    deploy: dict[str, Any] = {}
    if deploy_file.is_file():
        deploy = (yaml.safe_load(deploy_file.read_text()) or {}).get("Deploy") or {}
    configured = (config.config_options.get("val_dataset") or {}).get("transforms")
    return configured or deploy.get("transforms")


def resolve_labels(config: ModelConfig, dic: dict[str, Any], num_classes: int) -> list[str]:
    """Label names: the configured set, else the dataset's, else ``class_<i>``."""
    dataset = (
        config.labels
        or DATASET_LABELS.get(dataset_type(dic) or "")
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
