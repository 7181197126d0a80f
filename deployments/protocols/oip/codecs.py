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
import json
import math
import urllib.parse
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from deployments.pipeline.errors import (
    MalformedRequest,
    PayloadTooLarge,
    UnknownModel,
    UnsupportedImage,
)
from deployments.protocols.oip import open_inference_grpc_pb2 as pb

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


# --- REST: the JSON objects ---------------------------------------------------------------


class _Model(BaseModel):
    # Clients add keys of their own (KServe sends "model_name"); the spec's keys are checked.
    model_config = ConfigDict(extra="ignore")


class RestRequestInput(_Model):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, _ParamField] | None = None
    data: Any = None


class RestRequestOutput(_Model):
    name: StrictStr
    parameters: dict[str, _ParamField] | None = None


class RestInferenceRequest(_Model):
    """The ``$inference_request`` JSON object."""

    id: StrictStr | None = None
    parameters: dict[str, _ParamField] | None = None
    inputs: list[RestRequestInput]
    outputs: list[RestRequestOutput] | None = None


class RestResponseOutput(_Model):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, _ParamField] | None = None
    data: list[Any] | None = None


class RestInferenceResponse(_Model):
    """The ``$inference_response`` JSON object (its JSON part, under the binary extension)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, _ParamField] | None = None
    outputs: list[RestResponseOutput]


def _flag(parameters: Mapping[str, ParamValue] | None, key: str, where: str) -> bool | None:
    value = (parameters or {}).get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _malformed("invalid_parameter", f"{where}: {key} must be true or false, got {value!r}")


def _binary_size(parameters: Mapping[str, ParamValue] | None, name: str) -> int | None:
    value = (parameters or {}).get("binary_data_size")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _malformed(
            "invalid_parameter",
            f"input {name!r}: binary_data_size must be a byte count, got {value!r}",
        )
    return value


def decompress_body(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate, identity), never inflating past ``max_bytes``.

    "deflate" is zlib-wrapped as HTTP says; a raw deflate stream is accepted too, since
    some clients send that. Too large: 413; damaged: 400; another coding: 415.
    """
    coding = (content_encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        attempts: tuple[int, ...] = (31,)
    elif coding == "deflate":
        attempts = (15, -15)
    else:
        raise UnsupportedImage(
            f"Content-Encoding {content_encoding!r} is not supported; use gzip or deflate",
            code="unsupported_content_encoding",
        )
    error: zlib.error | None = None
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, max_bytes + 1)
        except zlib.error as e:
            error = e
            continue
        if len(out) > max_bytes:
            raise PayloadTooLarge(
                f"the request body inflates past the limit of {max_bytes} bytes",
                code="payload_too_large",
            )
        if not inflater.eof:
            raise _malformed("invalid_compression", f"the {coding} body is truncated")
        return out
    raise _malformed("invalid_compression", f"the {coding} body cannot be inflated: {error}")


def compress_body(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """Compress a response for ``Accept-Encoding`` (gzip, else deflate); the coding used."""
    accepted = {
        part.split(";")[0].strip().lower()
        for part in (accept_encoding or "").split(",")
        if part.strip() and not part.replace(" ", "").endswith(";q=0")
    }
    if "gzip" in accepted:
        # Level 1: label maps are long runs, and the CPU is the gateway's bottleneck.
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        return compressor.compress(body) + compressor.flush(), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None


def decode_rest_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Decode a v2 REST infer body (already decompressed).

    ``header_length`` is the ``Inference-Header-Content-Length`` header: absent, the whole
    body is JSON; ``0``, the body is one binary ``image`` item (Triton's raw binary
    request, whose outputs are all binary); else the first bytes are JSON and the
    rest is the inputs' binary data, which must add up exactly.
    """
    json_part, binary = _split_body(body, header_length)
    if json_part is None:
        image = Tensor(INPUT_NAME, BYTES, (1,), (bytes(binary),))
        return InferRequest(inputs=(image,), binary_output=True)
    try:
        parsed = RestInferenceRequest.model_validate_json(json_part)
    except PydanticValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise _malformed(
            "invalid_request",
            f"the inference request is not valid v2 JSON: {where}: {first['msg']}",
        ) from e
    inputs: list[Tensor] = []
    offset = 0
    for item in parsed.inputs:
        size = _binary_size(item.parameters, item.name)
        parameters = {k: v for k, v in (item.parameters or {}).items() if k != "binary_data_size"}
        shape = tuple(item.shape)
        _element_count(shape, item.name)
        if size is not None:
            if item.data is not None:
                raise _malformed(
                    "invalid_data", f"input {item.name!r} has both data and binary_data_size"
                )
            if size > len(binary) - offset:
                raise _malformed(
                    "binary_size_mismatch",
                    f"input {item.name!r} claims {size} binary bytes, but only "
                    f"{len(binary) - offset} follow",
                )
            data = _from_binary(binary[offset : offset + size], item.datatype, shape, item.name)
            offset += size
        elif item.data is None:
            raise _malformed(
                "missing_data", f"input {item.name!r} has neither data nor binary data"
            )
        elif item.datatype == BYTES:
            flat = _flatten(item.data)
            count = _element_count(shape, item.name)
            if len(flat) != count:
                raise _malformed(
                    "shape_mismatch",
                    f"input {item.name!r}: shape {list(shape)} holds {count} items, "
                    f"the data has {len(flat)}",
                )
            data = tuple(decode_bytes_item(value, item.name) for value in flat)
        else:
            data = _from_values(item.data, item.datatype, shape, item.name)
        inputs.append(_make_tensor(item.name, item.datatype, shape, data, parameters))
    if offset != len(binary):
        raise _malformed(
            "binary_size_mismatch",
            f"the inputs' binary_data_size add up to {offset} bytes, but {len(binary)} follow "
            "the JSON header",
        )
    outputs = tuple(
        RequestedOutput(
            name=output.name,
            binary=_flag(output.parameters, "binary_data", f"output {output.name!r}"),
            parameters={k: v for k, v in (output.parameters or {}).items() if k != "binary_data"},
        )
        for output in parsed.outputs or ()
    )
    parameters = dict(parsed.parameters or {})
    binary_output = _flag(parameters, "binary_data_output", "request") or False
    parameters.pop("binary_data_output", None)
    return InferRequest(
        inputs=tuple(inputs),
        id=parsed.id or "",
        parameters=parameters,
        outputs=outputs,
        binary_output=binary_output,
    )


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes | None, memoryview]:
    view = memoryview(body)
    if header_length is None or header_length.strip() == "":
        return body, view[len(view) :]
    try:
        length = int(header_length.strip())
    except ValueError:
        length = -1
    if length < 0 or length > len(body):
        raise _malformed(
            "binary_size_mismatch",
            f"{HEADER_LENGTH} must be a byte count of at most the body's {len(body)} bytes, "
            f"got {header_length!r}",
        )
    if length == 0:
        return None, view
    return body[:length], view[length:]


@dataclass(frozen=True)
class EncodedBody:
    """A REST response body; ``header_length`` is set when binary data follows the JSON."""

    body: bytes
    header_length: int | None

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.header_length is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers[HEADER_LENGTH] = str(self.header_length)
        return headers


def _json_data(tensor: Tensor) -> list[Any]:
    if tensor.datatype != BYTES:
        return tensor.array.ravel().tolist()  # type: ignore[no-any-return]
    if tensor.text:
        return [item.decode("utf-8") for item in tensor.items]
    return [base64.b64encode(item).decode("ascii") for item in tensor.items]


def encode_outputs(
    outputs: Sequence[Tensor], binary: Sequence[bool]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Each output as its JSON object, with JSON ``data`` or ``binary_data_size`` plus a chunk."""
    if len(outputs) != len(binary):
        raise ValueError("one binary flag per output")
    objects: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor, as_binary in zip(outputs, binary, strict=True):
        obj: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        parameters: dict[str, ParamValue] = dict(tensor.parameters)
        if as_binary:
            chunk = _to_binary(tensor)
            parameters["binary_data_size"] = len(chunk)
            chunks.append(chunk)
        else:
            obj["data"] = _json_data(tensor)
        if parameters:
            obj["parameters"] = parameters
        objects.append(obj)
    return objects, chunks


def encode_rest_response(
    request: InferRequest,
    outputs: Sequence[Tensor],
    *,
    model_name: str,
    parameters: Mapping[str, ParamValue] | None = None,
) -> EncodedBody:
    """The response body to ``request``: outputs as given (in :meth:`InferRequest.output_names`
    order), each JSON or binary as the request asked."""
    objects, chunks = encode_outputs(outputs, [request.binary_for(t.name) for t in outputs])
    response: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION}
    if request.id:
        response["id"] = request.id
    if parameters:
        response["parameters"] = dict(parameters)
    response["outputs"] = objects
    header = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return EncodedBody(header, None)
    return EncodedBody(header + b"".join(chunks), len(header))


def decode_rest_response(body: bytes, header_length: str | None = None) -> dict[str, Tensor]:
    """Parse a v2 REST response into its outputs (for tests and segserve's own clients)."""
    json_part, binary = _split_body(body, header_length)
    if json_part is None:
        raise _malformed("invalid_response", "a response always has a JSON part")
    parsed = RestInferenceResponse.model_validate_json(json_part)
    tensors: dict[str, Tensor] = {}
    offset = 0
    for item in parsed.outputs:
        size = _binary_size(item.parameters, item.name)
        shape = tuple(item.shape)
        if size is not None:
            data = _from_binary(binary[offset : offset + size], item.datatype, shape, item.name)
            offset += size
        elif item.datatype == BYTES:
            data = tuple(str(value).encode() for value in _flatten(item.data))
        else:
            data = _from_values(item.data, item.datatype, shape, item.name)
        tensors[item.name] = Tensor(item.name, item.datatype, shape, data)
    return tensors


# --- gRPC ---------------------------------------------------------------------------------


def param_from_proto(name: str, parameter: pb.InferParameter) -> ParamValue:
    """An ``InferParameter`` (any of its five kinds) as a Python value."""
    choice = parameter.WhichOneof("parameter_choice")
    if choice is None:
        raise _malformed("invalid_parameter", f"parameter {name!r} has no value")
    value: ParamValue = getattr(parameter, choice)
    return value


def param_to_proto(value: ParamValue, target: pb.InferParameter) -> None:
    """Write ``value`` into ``target`` with the fitting kind (uint64 past int64's range)."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if value > 2**63 - 1:
            target.uint64_param = value
        else:
            target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _params_from_proto(params: Mapping[str, pb.InferParameter]) -> dict[str, ParamValue]:
    return {name: param_from_proto(name, value) for name, value in params.items()}


def decode_grpc_request(message: pb.ModelInferRequest) -> InferRequest:
    """Decode a ``ModelInferRequest``: raw contents for every input, or typed for every one."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise _malformed(
            "binary_size_mismatch",
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs",
        )
    inputs: list[Tensor] = []
    for index, item in enumerate(message.inputs):
        shape = tuple(item.shape)
        _element_count(shape, item.name)
        if item.datatype not in DATATYPES:
            _fixed_dtype(item.datatype, item.name)
        field_name = _CONTENTS_FIELD.get(item.datatype)
        typed = getattr(item.contents, field_name) if field_name else ()
        if raw:
            if len(typed):
                raise _malformed(
                    "invalid_data",
                    f"input {item.name!r} has both contents and raw_input_contents",
                )
            data: Any = _from_binary(raw[index], item.datatype, shape, item.name)
        elif field_name is None:
            raise _malformed(
                "invalid_data", f"input {item.name!r}: {item.datatype} travels only as raw contents"
            )
        elif item.datatype == BYTES:
            count = _element_count(shape, item.name)
            if len(typed) != count:
                raise _malformed(
                    "shape_mismatch",
                    f"input {item.name!r}: shape {list(shape)} holds {count} items, "
                    f"bytes_contents has {len(typed)}",
                )
            data = tuple(typed)
        else:
            data = _from_values(list(typed), item.datatype, shape, item.name)
        inputs.append(
            _make_tensor(item.name, item.datatype, shape, data, _params_from_proto(item.parameters))
        )
    outputs = tuple(
        RequestedOutput(name=output.name, parameters=_params_from_proto(output.parameters))
        for output in message.outputs
    )
    return InferRequest(
        inputs=tuple(inputs),
        id=message.id,
        parameters=_params_from_proto(message.parameters),
        outputs=outputs,
        model_name=message.model_name,
        model_version=message.model_version,
    )


def encode_grpc_request(
    model_name: str, request: InferRequest, *, raw: bool = True
) -> pb.ModelInferRequest:
    """Inverse of :func:`decode_grpc_request` (tests, benchmarks, segserve's own clients)."""
    message = pb.ModelInferRequest(
        model_name=model_name, model_version=request.model_version, id=request.id
    )
    for key, value in request.parameters.items():
        param_to_proto(value, message.parameters[key])
    for tensor in request.inputs:
        item = message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        for key, value in tensor.parameters.items():
            param_to_proto(value, item.parameters[key])
        if raw:
            message.raw_input_contents.append(_to_binary(tensor))
        elif tensor.datatype == BYTES:
            item.contents.bytes_contents.extend(tensor.items)
        else:
            getattr(item.contents, _CONTENTS_FIELD[tensor.datatype]).extend(
                tensor.array.ravel().tolist()
            )
    for output in request.outputs:
        message.outputs.add(name=output.name)
    return message


def encode_grpc_response(
    request: InferRequest,
    outputs: Sequence[Tensor],
    *,
    model_name: str,
    parameters: Mapping[str, ParamValue] | None = None,
) -> pb.ModelInferResponse:
    """A ``ModelInferResponse`` whose every output is in ``raw_output_contents``, in order."""
    message = pb.ModelInferResponse(
        model_name=model_name, model_version=MODEL_VERSION, id=request.id
    )
    for key, value in (parameters or {}).items():
        param_to_proto(value, message.parameters[key])
    for tensor in outputs:
        item = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        for key, value in tensor.parameters.items():
            param_to_proto(value, item.parameters[key])
        message.raw_output_contents.append(_to_binary(tensor))
    return message


def decode_grpc_response(message: pb.ModelInferResponse) -> dict[str, Tensor]:
    """The outputs of a ``ModelInferResponse`` (raw or typed contents)."""
    tensors: dict[str, Tensor] = {}
    for index, item in enumerate(message.outputs):
        shape = tuple(item.shape)
        if message.raw_output_contents:
            data: Any = _from_binary(
                message.raw_output_contents[index], item.datatype, shape, item.name
            )
        elif item.datatype == BYTES:
            data = tuple(item.contents.bytes_contents)
        else:
            values = list(getattr(item.contents, _CONTENTS_FIELD[item.datatype]))
            data = _from_values(values, item.datatype, shape, item.name)
        tensors[item.name] = Tensor(item.name, item.datatype, shape, data)
    return tensors


# --- segserve's tensors -------------------------------------------------------------------


def image_inputs(request: InferRequest) -> list[bytes] | list[np.ndarray]:
    """The request's images: N encoded files (BYTES [N] or [N,1]) or N HxWx3 RGB arrays
    (UINT8 [N,H,W,3] or [H,W,3]). One input named ``image``; anything else is 400."""
    if len(request.inputs) != 1:
        raise _malformed(
            "invalid_inputs",
            f"expected one input {INPUT_NAME!r}, got {len(request.inputs)}: "
            f"{[t.name for t in request.inputs]}",
        )
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise _malformed(
            "unknown_input", f"unknown input {tensor.name!r}; the one input is {INPUT_NAME!r}"
        )
    shape = tensor.shape
    if tensor.datatype == BYTES:
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
            raise _malformed(
                "shape_mismatch",
                f"input {INPUT_NAME!r} BYTES has shape [N] or [N,1] with N >= 1, got {list(shape)}",
            )
        return list(tensor.items)
    if tensor.datatype == "UINT8":
        array = tensor.array
        if array.ndim == 3:
            array = array[np.newaxis]
        if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
            raise _malformed(
                "shape_mismatch",
                f"input {INPUT_NAME!r} UINT8 has shape [N,H,W,3] or [H,W,3], got {list(shape)}",
            )
        return list(array)
    raise _malformed(
        "invalid_datatype",
        f"input {INPUT_NAME!r} is BYTES (encoded image files) or UINT8 (RGB pixels), "
        f"got {tensor.datatype}",
    )


def labels_tensor(label_maps: Sequence[np.ndarray], *, wide: bool = False) -> Tensor:
    """``labels`` [N,H,W]: UINT8, or UINT16 when ``wide`` (over 256 classes) or any map is.

    Maps of different sizes cannot share one tensor: 400, naming the way out.
    """
    sizes = {m.shape for m in label_maps}
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
        raise _malformed(
            "mixed_sizes",
            f"output {LABELS!r} needs label maps of one size, got {listed}; send images of one "
            f"size, ask for mask_size=model, or request {MASK_PNG!r} / {CLASSES!r} instead",
        )
    wide = wide or any(m.dtype != np.uint8 for m in label_maps)
    datatype = "UINT16" if wide else "UINT8"
    stacked = np.stack([np.asarray(m) for m in label_maps]).astype(_FIXED_DTYPES[datatype])
    return Tensor(LABELS, datatype, tuple(stacked.shape), stacked)


def classes_tensor(tables: Sequence[object]) -> Tensor:
    """``classes`` [N]: each image's class table as UTF-8 JSON."""
    items = tuple(json.dumps(table, separators=(",", ":")).encode() for table in tables)
    return Tensor(CLASSES, BYTES, (len(items),), items, text=True)


def mask_png_tensor(pngs: Sequence[bytes]) -> Tensor:
    """``mask_png`` [N]: each image's label PNG (base64 when sent as JSON)."""
    return Tensor(MASK_PNG, BYTES, (len(pngs),), tuple(pngs))


# --- metadata and errors ------------------------------------------------------------------


def error_json(message: str, code: str | None = None) -> dict[str, str]:
    """A v2 error body: ``{"error": message}`` as the spec says, ``code`` beside it."""
    return {"error": message} if code is None else {"error": message, "code": code}


def server_metadata(name: str, version: str) -> dict[str, Any]:
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(name: str, *, wide_labels: bool = False, platform: str = "") -> dict[str, Any]:
    """``$metadata_model_response``: one ``image`` input (BYTES; UINT8 pixels also accepted)."""
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": platform,
        "inputs": [{"name": INPUT_NAME, "datatype": BYTES, "shape": [-1]}],
        "outputs": [
            {
                "name": LABELS,
                "datatype": "UINT16" if wide_labels else "UINT8",
                "shape": [-1, -1, -1],
            },
            {"name": CLASSES, "datatype": BYTES, "shape": [-1]},
            {"name": MASK_PNG, "datatype": BYTES, "shape": [-1]},
        ],
    }


def model_metadata_proto(metadata: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """:func:`model_metadata`'s dict as the gRPC message."""
    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata["versions"],
        platform=metadata["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
    )


def server_metadata_proto(metadata: Mapping[str, Any]) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=metadata["name"], version=metadata["version"], extensions=metadata["extensions"]
    )
