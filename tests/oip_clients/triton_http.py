"""tritonclient's HTTP client against a served segserve (run in .venv-clients).

python triton_http.py --url 127.0.0.1:8000 --image photo.jpg --out DIR [--model NAME]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.http as httpclient
from _report import Report, parse_args, rgb_pixels
from tritonclient.utils import InferenceServerException


def status(e: BaseException) -> object:
    return e.status() if isinstance(e, InferenceServerException) else None


def main() -> None:
    args = parse_args(__doc__ or "")
    url = args.url.removeprefix("http://")
    client = httpclient.InferenceServerClient(url=url, network_timeout=120.0)
    report = Report("triton_http", args.out)
    encoded = args.image.read_bytes()
    encoded2 = args.image2.read_bytes()

    def bytes_input(items: list[bytes], shape: list[int]) -> httpclient.InferInput:
        inp = httpclient.InferInput("image", shape, "BYTES")
        inp.set_data_from_numpy(np.array(items, dtype=np.object_).reshape(shape))
        return inp

    def outputs(names_binary: list[tuple[str, bool]]) -> list[httpclient.InferRequestedOutput]:
        return [httpclient.InferRequestedOutput(n, binary_data=b) for n, b in names_binary]

    def infer(
        case: str, inputs: list[Any], model: str = args.model, **kwargs: Any
    ) -> dict[str, Any]:
        result = client.infer(model, inputs, **kwargs)
        response = result.get_response()
        tensors = {o["name"]: result.as_numpy(o["name"]) for o in response["outputs"]}
        return {
            "id": response.get("id"),
            "model_name": response.get("model_name"),
            "model_version": response.get("model_version"),
            "parameters": response.get("parameters"),
            "binary": {
                o["name"]: "binary_data_size" in (o.get("parameters") or {})
                for o in response["outputs"]
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
    c("server_metadata", client.get_server_metadata, status)
    c("model_metadata", lambda: client.get_model_metadata(args.model), status)
    c("model_metadata_version_1", lambda: client.get_model_metadata(args.model, "1"), status)
    c("model_metadata_unknown", lambda: client.get_model_metadata("no-such-model"), status)

    c("infer_bytes_1", lambda: infer("infer_bytes_1", [bytes_input([encoded], [1])]), status)
    c(
        "infer_bytes_2x1",
        lambda: infer("infer_bytes_2x1", [bytes_input([encoded, encoded], [2, 1])]),
        status,
    )
    c(
        "infer_bytes_2",
        lambda: infer("infer_bytes_2", [bytes_input([encoded, encoded], [2])]),
        status,
    )

    def uint8(binary: bool) -> httpclient.InferInput:
        pixels = rgb_pixels(args.image)[np.newaxis]
        inp = httpclient.InferInput("image", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels, binary_data=binary)
        return inp

    c("infer_uint8", lambda: infer("infer_uint8", [uint8(True)]), status)
    c("infer_uint8_json", lambda: infer("infer_uint8_json", [uint8(False)]), status)
    one = [bytes_input([encoded], [1])]
    all_json = [("labels", False), ("classes", False), ("mask_png", False)]
    all_binary = [("labels", True), ("classes", True), ("mask_png", True)]
    c("outputs_json", lambda: infer("outputs_json", one, outputs=outputs(all_json)), status)
    c("outputs_binary", lambda: infer("outputs_binary", one, outputs=outputs(all_binary)), status)
    c(
        "outputs_mixed",
        lambda: infer(
            "outputs_mixed", one, outputs=outputs([("labels", True), ("classes", False)])
        ),
        status,
    )
    for algorithm in ("gzip", "deflate"):
        c(
            f"compress_{algorithm}",
            lambda a=algorithm: infer(
                f"compress_{a}",
                one,
                request_compression_algorithm=a,
                response_compression_algorithm=a,
            ),
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
            parameters={"budget_ms": 30000, "strict": False, "mask_size": "model", "note": "x"},
        ),
        status,
    )
    # tritonclient's own timeout (microseconds): the budget when budget_ms is absent.
    c("timeout", lambda: infer("timeout", one, timeout=30_000_000), status)

    c("err_corrupt", lambda: infer("err", [bytes_input([b"\xff\xd8\xffnot a jpeg"], [1])]), status)

    def wrong_datatype() -> dict[str, Any]:
        inp = httpclient.InferInput("image", [1, 2], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 2), np.float32))
        return infer("err", [inp])

    def unknown_input() -> dict[str, Any]:
        inp = httpclient.InferInput("img", [1], "BYTES")
        inp.set_data_from_numpy(np.array([encoded], dtype=np.object_))
        return infer("err", [inp])

    def wrong_binary_size() -> dict[str, Any]:
        inp = bytes_input([encoded], [1])
        # The real client, with its own size parameter one byte too large.
        inp._parameters["binary_data_size"] += 1
        return infer("err", [inp])

    c("err_datatype", wrong_datatype, status)
    c("err_unknown_input", unknown_input, status)
    c("err_binary_size", wrong_binary_size, status)
    c("err_unknown_model", lambda: infer("err", one, model="no-such-model"), status)
    c(
        "err_unknown_output",
        lambda: infer("err", one, outputs=outputs([("logits", True)])),
        status,
    )
    c(
        "mixed_sizes_no_labels",
        lambda: infer(
            "mixed_sizes_no_labels",
            [bytes_input([encoded, encoded2], [2])],
            outputs=outputs([("classes", False), ("mask_png", True)]),
        ),
        status,
    )
    c(
        "err_mixed_sizes_labels",
        lambda: infer(
            "err", [bytes_input([encoded, encoded2], [2])], outputs=outputs([("labels", True)])
        ),
        status,
    )
    client.close()
    report.emit()


if __name__ == "__main__":
    main()
