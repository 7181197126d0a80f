"""The cases both KServe clients run (InferenceRESTClient and InferenceGRPCClient).

KServe's clients have no metadata calls, no model version in the REST path and no request
compression; what they have is exercised here the way a KServe user would call it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from _report import Report, rgb_pixels
from kserve import InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput


def bytes_input(items: list[bytes], shape: list[int], name: str = "image") -> InferInput:
    inp = InferInput(name, shape, "BYTES")
    inp.set_data_from_numpy(np.array(items, dtype=np.object_).reshape(shape), binary_data=True)
    return inp


def summarise(report: Report, case: str, response: Any) -> dict[str, Any]:
    tensors = {output.name: output.as_numpy() for output in response.outputs}
    parameters = response.parameters
    if parameters is not None and not isinstance(parameters, dict):  # gRPC MessageMap
        # A kind KServe's proto lacks (double_param) has no choice: shown as None.
        parameters = {
            k: getattr(v, kind) if (kind := v.WhichOneof("parameter_choice")) else None
            for k, v in parameters.items()
        }
    return {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "parameters": parameters,
        "outputs": report.outputs(case, tensors),
    }


async def run_cases(
    report: Report,
    args: Any,
    infer: Callable[[InferRequest], Awaitable[Any]],
    health: dict[str, Callable[[], Awaitable[Any]]],
    status: Callable[[BaseException], object],
) -> None:
    """Every case, one after another; each result or error lands in ``report``."""
    encoded = args.image.read_bytes()
    encoded2 = args.image2.read_bytes()

    async def case(name: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            report.cases[name] = {"ok": True, "value": await call()}
        except Exception as e:  # the report records every call's outcome
            report.cases[name] = {
                "ok": False,
                "error": {
                    "type": f"{type(e).__module__}.{type(e).__qualname__}",
                    "status": status(e),
                    "message": str(e),
                },
            }

    def run(
        name: str, inputs: list[InferInput], model: str | None = None, **kw: Any
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def call() -> dict[str, Any]:
            request = InferRequest(model_name=model or args.model, infer_inputs=inputs, **kw)
            return summarise(report, name, await infer(request))

        return call

    for name, call in health.items():
        await case(name, call)
    if args.health_only:
        return
    one: Callable[[], list[InferInput]] = lambda: [bytes_input([encoded], [1])]  # noqa: E731
    await case("infer_bytes_1", run("infer_bytes_1", one()))
    await case("infer_bytes_2x1", run("infer_bytes_2x1", [bytes_input([encoded] * 2, [2, 1])]))
    await case("infer_bytes_2", run("infer_bytes_2", [bytes_input([encoded] * 2, [2])]))
    pixels = rgb_pixels(args.image)[np.newaxis]
    for binary in (True, False):
        inp = InferInput("image", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels, binary_data=binary)
        await case("infer_uint8" if binary else "infer_uint8_json", run("infer_uint8", [inp]))
    # KServe asks for binary outputs only through each output's binary_data parameter.
    await case(
        "outputs_binary",
        run(
            "outputs_binary",
            one(),
            request_outputs=[
                RequestedOutput(n, {"binary_data": True}) for n in ("labels", "classes")
            ],
        ),
    )
    await case(
        "outputs_mixed",
        run(
            "outputs_mixed",
            one(),
            request_outputs=[
                RequestedOutput("labels", {"binary_data": True}),
                RequestedOutput("mask_png", {"binary_data": False}),
            ],
        ),
    )
    await case(
        "mixed_sizes_no_labels",
        run(
            "mixed_sizes_no_labels",
            [bytes_input([encoded, encoded2], [2])],
            request_outputs=[RequestedOutput("classes"), RequestedOutput("mask_png")],
        ),
    )
    await case("version_1", run("version_1", one(), model_version="1"))
    await case("version_2", run("version_2", one(), model_version="2"))
    await case("request_id", run("request_id", one(), request_id="req-42"))
    await case(
        "parameters",
        run(
            "parameters",
            one(),
            parameters={"budget_ms": 30000, "strict": False, "mask_size": "model", "note": "x"},
        ),
    )
    await case("err_corrupt", run("err", [bytes_input([b"\xff\xd8\xffnot a jpeg"], [1])]))
    wrong = InferInput("image", [1, 2], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 2), np.float32))
    await case("err_datatype", run("err", [wrong]))
    await case("err_unknown_input", run("err", [bytes_input([encoded], [1], name="img")]))
    bad = bytes_input([encoded], [1])
    bad._raw_data = (len(encoded) + 10).to_bytes(4, "little") + encoded
    bad.parameters["binary_data_size"] = len(bad._raw_data)
    await case("err_binary_size", run("err", [bad]))
    await case("err_unknown_model", run("err", one(), model="no-such-model"))
    await case("err_unknown_output", run("err", one(), request_outputs=[RequestedOutput("logits")]))
