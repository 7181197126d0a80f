"""Tensor codecs of the Open Inference Protocol (KServe v2), free of any transport.

Every way a v2 request can carry tensors ends here in one form, :class:`InferRequest`
of :class:`Tensor`: REST JSON (nested or flat row-major ``data``), Triton's binary tensor
data extension (a JSON header of ``Inference-Header-Content-Length`` bytes, then each
input's ``binary_data_size`` bytes in order) and gRPC ``ModelInferRequest`` (typed
``contents`` or ``raw_input_contents``). Responses go back the same ways: per output JSON
``data`` or binary (the ``binary_data`` / ``binary_data_output`` parameters), and on gRPC
always ``raw_output_contents``, since tritonclient's gRPC client reads nothing else.

Every malformed tensor is a :class:`MalformedRequest` (400 / INVALID_ARGUMENT) with a
``code`` saying which rule broke; nothing here can turn a client's mistake into a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import math
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr

from deployments.pipeline.errors import (
    MalformedRequest,
    UnknownModel,
)

#: The HTTP header giving the JSON part's length when binary tensors follow it.
HEADER_LENGTH: Final = "Inference-Header-Content-Length"
#: Every model is one v2 model of the same name with this one version.
MODEL_VERSION: Final = "1"
#: The one input: encoded image files (BYTES) or decoded RGB pixels (UINT8).
INPUT_NAME: Final = "image"
LABELS: Final = "labels"
CLASSES: Final = "classes"
MASK_PNG: Final = "mask_png"
#: The outputs, in the order they are answered when a request names none.
OUTPUT_NAMES: Final = (LABELS, CLASSES, MASK_PNG)
#: Triton's extensions that segserve implements (server metadata's ``extensions``).
EXTENSIONS: Final = ("binary_tensor_data",)

#: Parameter values: the REST spec allows a string, a number or a boolean.
ParamValue = bool | int | float | str
_ParamField = StrictBool | StrictInt | StrictFloat | StrictStr

_FIXED_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES: Final = "BYTES"
DATATYPES: Final = (*_FIXED_DTYPES, BYTES)

# Which repeated field of InferTensorContents holds each datatype (the gRPC spec's table).
_CONTENTS_FIELD: Final = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


def _malformed(code: str, message: str) -> MalformedRequest:
    return MalformedRequest(message, code=code)


# --- the transport-free form -------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """One tensor: ``data`` is an array of ``shape`` or, for BYTES, the flat row-major items.

    ``text`` (BYTES only) says the items are UTF-8 text, written as JSON strings as they
    are; other BYTES items are written base64 in JSON, the way they are read.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | tuple[bytes, ...]
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    text: bool = False

    @property
    def items(self) -> tuple[bytes, ...]:
        if not isinstance(self.data, tuple):
            raise TypeError(f"tensor {self.name!r} is {self.datatype}, not BYTES")
        return self.data

    @property
    def array(self) -> np.ndarray:
        if isinstance(self.data, tuple):
            raise TypeError(f"tensor {self.name!r} is BYTES, not an array")
        return self.data


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client named; ``binary`` is its ``binary_data`` parameter, if given."""

    name: str
    binary: bool | None = None
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    """A decoded v2 inference request, whichever transport it came by."""

    inputs: tuple[Tensor, ...]
    id: str = ""
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    #: Empty: the client named none, so every output is answered.
    outputs: tuple[RequestedOutput, ...] = ()
    #: ``binary_data_output``: the default for outputs without their own ``binary_data``.
    binary_output: bool = False
    #: gRPC carries these in the message; REST in the path (left empty here).
    model_name: str = ""
    model_version: str = ""

    def output_names(self, available: Sequence[str] = OUTPUT_NAMES) -> tuple[str, ...]:
        """The outputs to answer, in order; 400 for an unknown or repeated name."""
        if not self.outputs:
            return tuple(available)
        names = tuple(output.name for output in self.outputs)
        unknown = [name for name in names if name not in available]
        if unknown:
            raise _malformed(
                "unknown_output",
                f"unknown output {unknown[0]!r}; this model has {', '.join(available)}",
            )
        if len(set(names)) != len(names):
            raise _malformed("duplicate_output", f"an output is named twice in {list(names)}")
        return names

    def binary_for(self, name: str) -> bool:
        """Whether output ``name`` goes back as binary data (REST); its own flag wins."""
        for output in self.outputs:
            if output.name == name and output.binary is not None:
                return output.binary
        return self.binary_output


def check_model_version(version: str | None) -> None:
    """Versions "" (the server's choice) and "1" exist; any other is 404."""
    if version not in (None, "", MODEL_VERSION):
        raise UnknownModel(
            f"model version {version!r} does not exist; the only version is {MODEL_VERSION!r}",
            code="unknown_model_version",
        )


def _element_count(shape: Sequence[int], name: str) -> int:
    for dim in shape:
        if dim < 0:
            raise _malformed("invalid_shape", f"input {name!r} has a negative dimension {shape}")
    return math.prod(shape)


# --- BYTES items: JSON strings and length-prefixed binary ---------------------------------


def decode_bytes_item(value: object, name: str) -> bytes:
    """A BYTES item in JSON: base64, or a ``data:`` URL (base64 or percent-encoded)."""
    if not isinstance(value, str):
        raise _malformed(
            "invalid_data",
            f"input {name!r}: BYTES items in JSON are base64 strings or data: URLs, "
            f"got {type(value).__name__}",
        )
    try:
        if value.startswith("data:"):
            header, sep, payload = value.partition(",")
            if not sep:
                raise ValueError("a data: URL needs a ',' before its data")
            if header.endswith(";base64"):
                return base64.b64decode(payload, validate=True)
            return urllib.parse.unquote_to_bytes(payload)
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _malformed(
            "invalid_base64", f"input {name!r}: a BYTES item is not valid base64 ({e})"
        ) from e


def split_bytes_items(buffer: bytes | memoryview, count: int, name: str) -> tuple[bytes, ...]:
    """Binary BYTES: each item a 4-byte little-endian length, then that many bytes.

    The items must fill ``buffer`` exactly and number ``count``: 400 otherwise.
    """
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < 4:
            raise _malformed(
                "invalid_binary_data",
                f"input {name!r}: {len(view) - offset} trailing bytes cannot hold a "
                "4-byte item length",
            )
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if length > len(view) - offset:
            raise _malformed(
                "invalid_binary_data",
                f"input {name!r}: item {len(items)} claims {length} bytes but only "
                f"{len(view) - offset} remain",
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise _malformed(
            "shape_mismatch",
            f"input {name!r}: the shape holds {count} items but the data has {len(items)}",
        )
    return tuple(items)


def pack_bytes_items(items: Iterable[bytes]) -> bytes:
    """Inverse of :func:`split_bytes_items`."""
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


# --- fixed-size tensors -------------------------------------------------------------------


def _fixed_dtype(datatype: str, name: str) -> np.dtype[Any]:
    try:
        return _FIXED_DTYPES[datatype]
    except KeyError:
        raise _malformed(
            "invalid_datatype",
            f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}",
        ) from None


def _from_values(values: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """JSON numbers (nested or flat, row-major) or typed gRPC contents -> an array."""
    dtype = _fixed_dtype(datatype, name)
    count = _element_count(shape, name)
    try:
        raw = np.asarray(values)
    except ValueError as e:  # ragged nesting
        raise _malformed("invalid_data", f"input {name!r}: data is not a regular array") from e
    if raw.size != count:
        raise _malformed(
            "shape_mismatch",
            f"input {name!r}: shape {list(shape)} holds {count} elements, the data has {raw.size}",
        )
    allowed = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}[dtype.kind]
    if raw.size and raw.dtype.kind not in allowed:
        raise _malformed(
            "invalid_data", f"input {name!r}: {datatype} data cannot hold {raw.dtype.kind!r} values"
        )
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        low, high = int(raw.min()), int(raw.max())
        if low < info.min or high > info.max:
            raise _malformed(
                "invalid_data",
                f"input {name!r}: {datatype} values lie in [{info.min}, {info.max}], "
                f"got {low if low < info.min else high}",
            )
    return raw.astype(dtype).reshape(shape)


def _from_binary(
    buffer: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str
) -> Any:
    if datatype == BYTES:
        return split_bytes_items(buffer, _element_count(shape, name), name)
    dtype = _fixed_dtype(datatype, name)
    expected = _element_count(shape, name) * dtype.itemsize
    if len(buffer) != expected:
        raise _malformed(
            "binary_size_mismatch",
            f"input {name!r}: {datatype} {list(shape)} is {expected} bytes, got {len(buffer)}",
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _to_binary(tensor: Tensor) -> bytes:
    if tensor.datatype == BYTES:
        return pack_bytes_items(tensor.items)
    dtype = _FIXED_DTYPES[tensor.datatype]
    return np.ascontiguousarray(tensor.array, dtype=dtype).tobytes()


def _make_tensor(
    name: str,
    datatype: str,
    shape: Sequence[int],
    data: Any,
    parameters: Mapping[str, ParamValue],
) -> Tensor:
    if datatype not in DATATYPES:
        _fixed_dtype(datatype, name)  # raises, naming the datatypes
    return Tensor(name, datatype, tuple(shape), data, dict(parameters))


def _flatten(values: Any) -> list[Any]:
    if not isinstance(values, list):
        return [values]
    flat: list[Any] = []
    stack: list[Any] = [iter(values)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat
