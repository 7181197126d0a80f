"""REST forms of v2 tensors: JSON bodies, Triton's binary tensor extension, compression."""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from deployments.pipeline.errors import (
    PayloadTooLarge,
    UnsupportedImage,
)
from deployments.protocols.oip.tensors import (
    BYTES,
    HEADER_LENGTH,
    INPUT_NAME,
    MODEL_VERSION,
    InferRequest,
    ParamValue,
    RequestedOutput,
    Tensor,
    _element_count,
    _flatten,
    _from_binary,
    _from_values,
    _make_tensor,
    _malformed,
    _ParamField,
    _to_binary,
    decode_bytes_item,
)

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
