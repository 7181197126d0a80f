from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentRequest(_message.Message):
    __slots__ = ("image", "model", "budget_ms", "outputs", "mask_size", "strict")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MASK_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model: str
    budget_ms: float
    outputs: _containers.RepeatedScalarFieldContainer[str]
    mask_size: str
    strict: bool
    def __init__(self, image: _Optional[bytes] = ..., model: _Optional[str] = ..., budget_ms: _Optional[float] = ..., outputs: _Optional[_Iterable[str]] = ..., mask_size: _Optional[str] = ..., strict: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("decode_ms", "queue_ms", "inference_ms", "encode_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    queue_ms: float
    inference_ms: float
    encode_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("model", "weights", "warning", "size", "processed", "classes", "mask_png", "mask_size", "timings", "batch_size", "budget")
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
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[str] = ..., warning: _Optional[str] = ..., size: _Optional[_Union[Size, _Mapping]] = ..., processed: _Optional[_Union[Size, _Mapping]] = ..., classes: _Optional[_Iterable[_Union[ClassShare, _Mapping]]] = ..., mask_png: _Optional[bytes] = ..., mask_size: _Optional[_Union[Size, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., batch_size: _Optional[int] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

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
