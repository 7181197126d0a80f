from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentRequest(_message.Message):
    __slots__ = ("image", "model", "budget_ms", "outputs", "mask_size", "strict", "min_area", "simplify", "max_classes", "alpha", "overlay_format", "legend")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MASK_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    MIN_AREA_FIELD_NUMBER: _ClassVar[int]
    SIMPLIFY_FIELD_NUMBER: _ClassVar[int]
    MAX_CLASSES_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FORMAT_FIELD_NUMBER: _ClassVar[int]
    LEGEND_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model: str
    budget_ms: float
    outputs: _containers.RepeatedScalarFieldContainer[str]
    mask_size: str
    strict: bool
    min_area: float
    simplify: float
    max_classes: int
    alpha: float
    overlay_format: str
    legend: bool
    def __init__(self, image: _Optional[bytes] = ..., model: _Optional[str] = ..., budget_ms: _Optional[float] = ..., outputs: _Optional[_Iterable[str]] = ..., mask_size: _Optional[str] = ..., strict: _Optional[bool] = ..., min_area: _Optional[float] = ..., simplify: _Optional[float] = ..., max_classes: _Optional[int] = ..., alpha: _Optional[float] = ..., overlay_format: _Optional[str] = ..., legend: _Optional[bool] = ...) -> None: ...

class Size(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ClassShare(_message.Message):
    __slots__ = ("id", "name", "pixels", "fraction")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    pixels: int
    fraction: float
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., pixels: _Optional[int] = ..., fraction: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_ms", "queue_ms", "inference_ms", "encode_ms", "total_ms", "encode_by_output_ms")
    class EncodeByOutputMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_BY_OUTPUT_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    queue_ms: float
    inference_ms: float
    encode_ms: float
    total_ms: float
    encode_by_output_ms: _containers.ScalarMap[str, float]
    def __init__(self, decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., encode_by_output_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Contour(_message.Message):
    __slots__ = ("coordinates", "area", "centroid")
    COORDINATES_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    CENTROID_FIELD_NUMBER: _ClassVar[int]
    coordinates: _containers.RepeatedScalarFieldContainer[float]
    area: float
    centroid: Point
    def __init__(self, coordinates: _Optional[_Iterable[float]] = ..., area: _Optional[float] = ..., centroid: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class ClassContours(_message.Message):
    __slots__ = ("id", "name", "area", "centroid", "contours")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    CENTROID_FIELD_NUMBER: _ClassVar[int]
    CONTOURS_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    area: float
    centroid: Point
    contours: _containers.RepeatedCompositeFieldContainer[Contour]
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., area: _Optional[float] = ..., centroid: _Optional[_Union[Point, _Mapping]] = ..., contours: _Optional[_Iterable[_Union[Contour, _Mapping]]] = ...) -> None: ...

class Contours(_message.Message):
    __slots__ = ("classes",)
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[ClassContours]
    def __init__(self, classes: _Optional[_Iterable[_Union[ClassContours, _Mapping]]] = ...) -> None: ...

class ClassRle(_message.Message):
    __slots__ = ("id", "name", "pixels", "height", "width", "counts")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    pixels: int
    height: int
    width: int
    counts: str
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., pixels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., counts: _Optional[str] = ...) -> None: ...

class Rle(_message.Message):
    __slots__ = ("classes",)
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[ClassRle]
    def __init__(self, classes: _Optional[_Iterable[_Union[ClassRle, _Mapping]]] = ...) -> None: ...

class Overlay(_message.Message):
    __slots__ = ("data", "format", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    format: str
    size: Size
    def __init__(self, data: _Optional[bytes] = ..., format: _Optional[str] = ..., size: _Optional[_Union[Size, _Mapping]] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("budget_ms", "predicted_ms", "met", "chosen_by")
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_MS_FIELD_NUMBER: _ClassVar[int]
    MET_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_BY_FIELD_NUMBER: _ClassVar[int]
    budget_ms: float
    predicted_ms: float
    met: bool
    chosen_by: str
    def __init__(self, budget_ms: _Optional[float] = ..., predicted_ms: _Optional[float] = ..., met: _Optional[bool] = ..., chosen_by: _Optional[str] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("model", "weights", "warning", "size", "processed", "classes", "mask_png", "mask_size", "timings", "batch_size", "budget", "contours", "rle", "overlay")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    MASK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    CONTOURS_FIELD_NUMBER: _ClassVar[int]
    RLE_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: str
    warning: str
    size: Size
    processed: Size
    classes: _containers.RepeatedCompositeFieldContainer[ClassShare]
    mask_png: bytes
    mask_size: Size
    timings: Timings
    batch_size: int
    budget: Budget
    contours: Contours
    rle: Rle
    overlay: Overlay
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[str] = ..., warning: _Optional[str] = ..., size: _Optional[_Union[Size, _Mapping]] = ..., processed: _Optional[_Union[Size, _Mapping]] = ..., classes: _Optional[_Iterable[_Union[ClassShare, _Mapping]]] = ..., mask_png: _Optional[bytes] = ..., mask_size: _Optional[_Union[Size, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., batch_size: _Optional[int] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., contours: _Optional[_Union[Contours, _Mapping]] = ..., rle: _Optional[_Union[Rle, _Mapping]] = ..., overlay: _Optional[_Union[Overlay, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "framework", "source", "weights", "ready", "labels", "details_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    framework: str
    source: str
    weights: str
    ready: bool
    labels: _containers.RepeatedScalarFieldContainer[str]
    details_json: str
    def __init__(self, name: _Optional[str] = ..., framework: _Optional[str] = ..., source: _Optional[str] = ..., weights: _Optional[str] = ..., ready: _Optional[bool] = ..., labels: _Optional[_Iterable[str]] = ..., details_json: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("default_model", "models")
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    default_model: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, default_model: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
