"""Tensor codecs of the Open Inference Protocol (KServe v2), free of any transport.

One import for the protocol modules: the forms themselves live in :mod:`tensors`
(the transport-free form), :mod:`rest` and :mod:`grpc_tensors`; segserve's own
tensors and the metadata documents are here.

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

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deployments.protocols.oip import open_inference_grpc_pb2 as pb
from deployments.protocols.oip.grpc_tensors import (
    decode_grpc_request,
    decode_grpc_response,
    encode_grpc_request,
    encode_grpc_response,
    param_from_proto,
    param_to_proto,
)
from deployments.protocols.oip.rest import (
    EncodedBody,
    RestInferenceRequest,
    RestInferenceResponse,
    RestRequestInput,
    RestRequestOutput,
    RestResponseOutput,
    compress_body,
    decode_rest_request,
    decode_rest_response,
    decompress_body,
    encode_outputs,
    encode_rest_response,
)
from deployments.protocols.oip.tensors import (
    _FIXED_DTYPES,
    BYTES,
    CLASSES,
    DATATYPES,
    EXTENSIONS,
    HEADER_LENGTH,
    INPUT_NAME,
    LABELS,
    MASK_PNG,
    MODEL_VERSION,
    OUTPUT_NAMES,
    InferRequest,
    ParamValue,
    RequestedOutput,
    Tensor,
    _malformed,
    _to_binary,
    check_model_version,
    decode_bytes_item,
    pack_bytes_items,
    split_bytes_items,
)

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


__all__ = [
    "BYTES",
    "CLASSES",
    "DATATYPES",
    "EXTENSIONS",
    "HEADER_LENGTH",
    "INPUT_NAME",
    "LABELS",
    "MASK_PNG",
    "MODEL_VERSION",
    "OUTPUT_NAMES",
    "EncodedBody",
    "InferRequest",
    "ParamValue",
    "RequestedOutput",
    "RestInferenceRequest",
    "RestInferenceResponse",
    "RestRequestInput",
    "RestRequestOutput",
    "RestResponseOutput",
    "Tensor",
    "_to_binary",
    "check_model_version",
    "classes_tensor",
    "compress_body",
    "decode_bytes_item",
    "decode_grpc_request",
    "decode_grpc_response",
    "decode_rest_request",
    "decode_rest_response",
    "decompress_body",
    "encode_grpc_request",
    "encode_grpc_response",
    "encode_outputs",
    "encode_rest_response",
    "error_json",
    "image_inputs",
    "labels_tensor",
    "mask_png_tensor",
    "model_metadata",
    "model_metadata_proto",
    "pack_bytes_items",
    "param_from_proto",
    "param_to_proto",
    "server_metadata",
    "server_metadata_proto",
    "split_bytes_items",
]
