"""tritonclient's gRPC client against a served segserve (run in .venv-clients).

python triton_grpc.py --url 127.0.0.1:9000 --image photo.jpg --out DIR [--model NAME]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from _report import Report, parse_args, rgb_pixels
from tritonclient.utils import InferenceServerException


def status(e: BaseException) -> object:
    return e.status() if isinstance(e, InferenceServerException) else None


def main() -> None:
    args = parse_args(__doc__ or "")
    client = grpcclient.InferenceServerClient(url=args.url)
    report = Report("triton_grpc", args.out)
    encoded = args.image.read_bytes()
    encoded2 = args.image2.read_bytes()

    def bytes_input(items: list[bytes], shape: list[int], name: str = "image") -> Any:
        inp = grpcclient.InferInput(name, shape, "BYTES")
        inp.set_data_from_numpy(np.array(items, dtype=np.object_).reshape(shape))
        return inp

    def outputs(names: list[str]) -> list[Any]:
        return [grpcclient.InferRequestedOutput(n) for n in names]

    def infer(
        case: str, inputs: list[Any], model: str = args.model, **kwargs: Any
    ) -> dict[str, Any]:
        result = client.infer(model, inputs, client_timeout=120.0, **kwargs)
        response = result.get_response()
        tensors = {o.name: result.as_numpy(o.name) for o in response.outputs}
        return {
            "id": response.id,
            "model_name": response.model_name,
            "model_version": response.model_version,
            "parameters": {
                k: getattr(v, v.WhichOneof("parameter_choice"))
                for k, v in response.parameters.items()
            },
            "outputs": report.outputs(case, tensors),
        }

    c = report.case
    c("server_live", client.is_server_live, status)
    c("server_ready", client.is_server_ready, status)
    c("model_ready", lambda: client.is_model_ready(args.model), status)
    c("model_ready_version_1", lambda: client.is_model_ready(args.model, "1"), status)
    c("model_ready_version_2", lambda: client.is_model_ready(args.model, "2"), status)
    c("model_ready_unknown", lambda: client.is_model_ready("no-such-model"), status)
    if args.not_ready_model:
        c("model_ready_not_ready", lambda: client.is_model_ready(args.not_ready_model), status)
    if args.health_only:
        client.close()
        report.emit()
        return
    c("server_metadata", lambda: client.get_server_metadata(as_json=True), status)
    c("model_metadata", lambda: client.get_model_metadata(args.model, as_json=True), status)
    c("model_metadata_unknown", lambda: client.get_model_metadata("no-such-model"), status)

    one = [bytes_input([encoded], [1])]
    c("infer_bytes_1", lambda: infer("infer_bytes_1", one), status)
    c(
        "infer_bytes_2x1",
        lambda: infer("infer_bytes_2x1", [bytes_input([encoded] * 2, [2, 1])]),
        status,
    )
    c("infer_bytes_2", lambda: infer("infer_bytes_2", [bytes_input([encoded] * 2, [2])]), status)

    def uint8() -> list[Any]:
        pixels = rgb_pixels(args.image)[np.newaxis]
        inp = grpcclient.InferInput("image", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        return [inp]

    c("infer_uint8", lambda: infer("infer_uint8", uint8()), status)
    c(
        "outputs_some",
        lambda: infer("outputs_some", one, outputs=outputs(["classes", "labels"])),
        status,
    )
    c(
        "mixed_sizes_no_labels",
        lambda: infer(
            "mixed_sizes_no_labels",
            [bytes_input([encoded, encoded2], [2])],
            outputs=outputs(["classes", "mask_png"]),
        ),
        status,
    )
    for algorithm in ("gzip", "deflate"):
        c(
            f"compress_{algorithm}",
            lambda a=algorithm: infer(f"compress_{a}", one, compression_algorithm=a),
            status,
        )
    c("version_1", lambda: infer("version_1", one, model_version="1"), status)
    c("version_2", lambda: infer("version_2", one, model_version="2"), status)
    c("request_id", lambda: infer("request_id", one, request_id="req-42"), status)
    c(
        "parameters",
        lambda: infer(
            "parameters",
            one,
            parameters={"budget_ms": 30000.0, "strict": False, "mask_size": "model", "n": 3},
        ),
        status,
    )
    c("timeout", lambda: infer("timeout", one, timeout=30_000_000), status)

    c("err_corrupt", lambda: infer("err", [bytes_input([b"\xff\xd8\xffnot a jpeg"], [1])]), status)

    def wrong_datatype() -> dict[str, Any]:
        inp = grpcclient.InferInput("image", [1, 2], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 2), np.float32))
        return infer("err", [inp])

    def wrong_binary_size() -> dict[str, Any]:
        inp = bytes_input([encoded], [1])
        # The real client with a BYTES length prefix that claims more than follows.
        inp._raw_content = (len(encoded) + 10).to_bytes(4, "little") + encoded
        return infer("err", [inp])

    c("err_datatype", wrong_datatype, status)
    c("err_unknown_input", lambda: infer("err", [bytes_input([encoded], [1], name="img")]), status)
    c("err_binary_size", wrong_binary_size, status)
    c("err_unknown_model", lambda: infer("err", one, model="no-such-model"), status)
    c("err_unknown_output", lambda: infer("err", one, outputs=outputs(["logits"])), status)
    c(
        "err_mixed_sizes_labels",
        lambda: infer("err", [bytes_input([encoded, encoded2], [2])], outputs=outputs(["labels"])),
        status,
    )
    client.close()
    report.emit()


if __name__ == "__main__":
    main()
