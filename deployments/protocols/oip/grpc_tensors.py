"""gRPC forms of v2 tensors: ``ModelInferRequest`` / ``ModelInferResponse`` both ways."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from deployments.protocols.oip import open_inference_grpc_pb2 as pb
from deployments.protocols.oip.tensors import (
    _CONTENTS_FIELD,
    BYTES,
    DATATYPES,
    MODEL_VERSION,
    InferRequest,
    ParamValue,
    RequestedOutput,
    Tensor,
    _element_count,
    _fixed_dtype,
    _from_binary,
    _from_values,
    _make_tensor,
    _malformed,
    _to_binary,
)

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
