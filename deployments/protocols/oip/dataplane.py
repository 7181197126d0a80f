"""What the Open Inference Protocol means for segserve, shared by its REST and gRPC modules.

Both transports decode a request into :class:`~codecs.InferRequest` and hand it here:
the path's (or message's) model name and version are checked against the configured
models, the v2 parameters become :class:`SegmentOptions`, each of the N images goes
to :meth:`SegmentationService.segment` as its own request (so they may share a model
batch with other callers) and the results come back as the ``labels``, ``classes`` and
``mask_png`` tensors, in order. Health, readiness and metadata are answered here too,
so the two transports cannot disagree.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import metadata as importlib_metadata
from typing import Any, Final

from deployments.pipeline.admission import Ticket
from deployments.pipeline.errors import InvalidParameter, SegServeError
from deployments.pipeline.imaging import Pixels
from deployments.pipeline.options import LABEL_MAP_OUTPUT, SegmentOptions, parse_options
from deployments.pipeline.service import SegmentationService
from deployments.protocols.oip import codecs
from deployments.protocols.oip.codecs import InferRequest, ParamValue, Tensor
from deployments.protocols.wire import SegmentResult

SERVER_NAME: Final = "segserve"
#: How long one model's readiness may take to answer before it counts as not ready.
READY_TIMEOUT_S: Final = 5.0
#: The segserve output each v2 output needs computed.
_SERVICE_OUTPUT: Final = {
    codecs.LABELS: LABEL_MAP_OUTPUT,
    codecs.CLASSES: "classes",
    codecs.MASK_PNG: "mask",
}
#: Label maps of models with more classes than this travel as UINT16.
_UINT8_CLASSES: Final = 256


def server_version() -> str:
    try:
        return importlib_metadata.version(SERVER_NAME)
    except importlib_metadata.PackageNotFoundError:  # a source checkout that is not installed
        return "0"


def server_metadata() -> dict[str, Any]:
    return codecs.server_metadata(SERVER_NAME, server_version())


def resolve(service: SegmentationService, model: str, version: str | None) -> str:
    """The configured model a v2 name means (``auto``: the default model); 404 otherwise."""
    codecs.check_model_version(version)
    return service.resolve_model(model)


async def server_ready(service: SegmentationService) -> list[str]:
    """The models that are not ready (empty: the server is ready)."""
    return await service.not_ready(READY_TIMEOUT_S)


async def model_ready(service: SegmentationService, model: str, version: str | None) -> bool:
    """Whether a model answers; 404 (:class:`UnknownModel`) for an unknown model or version."""
    name = resolve(service, model, version)
    try:
        return bool(await asyncio.wait_for(service.endpoints[name].ready(), READY_TIMEOUT_S))
    except Exception:  # a replica that is loading, gone or failing is simply not ready
        return False


async def model_metadata(
    service: SegmentationService, model: str, version: str | None
) -> dict[str, Any]:
    """``$metadata_model_response`` of a configured model (its own name, ``auto`` included)."""
    name = resolve(service, model, version)
    config = service.models[name]
    wide = False
    try:  # the class count decides UINT8/UINT16; a model still loading is described anyway
        card = await asyncio.wait_for(service.endpoints[name].card(), READY_TIMEOUT_S)
        wide = len(card.labels) > _UINT8_CLASSES
    except Exception:
        pass
    described = codecs.model_metadata(model, wide_labels=wide, platform=config.framework)
    return described


# --- parameters ---------------------------------------------------------------------------


def _number(parameters: Mapping[str, ParamValue], key: str) -> float | str | None:
    value = parameters.get(key)
    if isinstance(value, bool):
        raise InvalidParameter(f"parameter {key} must be a number, got {value!r}")
    return value


def _check_reserved(parameters: Mapping[str, ParamValue]) -> None:
    """The spec's reserved parameters: sequences cannot be honoured, priority is accepted."""
    sequence_id = parameters.get("sequence_id")
    if sequence_id not in (None, 0, "", "0"):
        raise InvalidParameter(
            f"sequence_id {sequence_id!r}: segserve's models are stateless, not sequence models",
            code="sequences_unsupported",
        )
    for key in ("sequence_start", "sequence_end"):
        if parameters.get(key) not in (None, False):
            raise InvalidParameter(
                f"{key} is set: segserve's models are stateless, not sequence models",
                code="sequences_unsupported",
            )
    priority = parameters.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or priority < 0
    ):
        raise InvalidParameter(f"priority must be a non-negative integer, got {priority!r}")


def options_for(
    request: InferRequest, model: str, outputs: tuple[str, ...], deadline_ms: float | None = None
) -> SegmentOptions:
    """The request's parameters as :class:`SegmentOptions` (422-class errors: see below).

    ``budget_ms`` wins; else tritonclient's ``timeout`` (microseconds) is the budget; else
    the gRPC call's deadline (``deadline_ms``) bounds the answer without choosing the
    model, as on ``segserve.v1``. Unknown parameters are the client's own and are ignored.
    """
    parameters = request.parameters
    _check_reserved(parameters)
    budget = _number(parameters, "budget_ms")
    from_timeout = False
    if budget is None:
        timeout = _number(parameters, "timeout")
        if timeout is not None:
            try:
                budget = float(timeout) / 1000.0
            except ValueError:
                raise InvalidParameter(
                    f"timeout must be a number of microseconds, got {timeout!r}"
                ) from None
            from_timeout = True
    mask_size = parameters.get("mask_size")
    if mask_size is not None and not isinstance(mask_size, str):
        raise InvalidParameter(f"mask_size must be 'original' or 'model', got {mask_size!r}")
    strict = parameters.get("strict")
    if strict is not None and not isinstance(strict, bool | str):
        raise InvalidParameter(f"strict must be true or false, got {strict!r}")
    from_deadline = budget is None and deadline_ms is not None
    options = parse_options(
        model, deadline_ms if from_deadline else budget, None, mask_size, strict
    )
    if from_timeout and options.budget_ms is not None and not math.isfinite(options.budget_ms):
        raise InvalidParameter("timeout must be finite")
    return replace(
        options,
        outputs=frozenset(_SERVICE_OUTPUT[name] for name in outputs),
        budget_is_deadline=from_deadline,
    )


# --- inference ----------------------------------------------------------------------------


@dataclass(frozen=True)
class InferResult:
    """The answer to one infer call: outputs in the requested order, response parameters."""

    outputs: list[Tensor]
    parameters: dict[str, ParamValue]


async def infer(
    service: SegmentationService,
    model: str,
    version: str | None,
    request: InferRequest,
    deadline_ms: float | None = None,
    ticket: Ticket | None = None,
) -> InferResult:
    """Segment every image of ``request`` with ``model``; the outputs it asked for.

    ``ticket``: the admission the transport took before reading the request; when it
    holds the model's slot, the other images of a batch take theirs here, all or none.
    """
    name = resolve(service, model, version)
    images = codecs.image_inputs(request)
    names = request.output_names()
    options = options_for(request, model, names, deadline_ms)
    sources: list[bytes | Pixels] = [
        image if isinstance(image, bytes) else Pixels(image) for image in images
    ]
    if ticket is not None and ticket.covers(name):
        ticket.take_more(name, len(sources) - 1)  # released with the ticket
    answers = await asyncio.gather(
        *(service.segment(source, options, ticket) for source in sources),
        return_exceptions=True,
    )
    results: list[SegmentResult] = []
    for answer in answers:  # every call has finished: none is left running
        if isinstance(answer, BaseException):
            raise answer
        results.append(answer)
    outputs = [_output(name, results) for name in names]
    return InferResult(outputs, response_parameters(results))


def _output(name: str, results: list[SegmentResult]) -> Tensor:
    if name == codecs.LABELS:
        maps = [r.labels for r in results]
        if any(m is None for m in maps):  # the service computes it when asked: a bug
            raise RuntimeError("the service answered without the label map it was asked for")
        return codecs.labels_tensor([m for m in maps if m is not None])
    if name == codecs.CLASSES:
        return codecs.classes_tensor(
            [[share.to_dict() for share in r.classes or []] for r in results]
        )
    return codecs.mask_png_tensor([r.mask_png or b"" for r in results])


def _joined(values: list[str]) -> str:
    return ",".join(dict.fromkeys(values))


def _ms(value: float) -> int:
    return round(value)


def response_parameters(results: list[SegmentResult]) -> dict[str, ParamValue]:
    """What ``/v1`` says beside the mask, flattened to v2's scalar parameters.

    With N images, each value covers all of them: the models and ``chosen_by`` joined
    (distinct, in order), ``weights`` "random" when any image had random weights, the
    largest batch size and times, and ``budget_met`` only when every image met it. Times
    are whole milliseconds: KServe's copy of the gRPC proto has no ``double_param``, so
    its client would not see a fractional one.
    """
    weights = [r.weights for r in results]
    parameters: dict[str, ParamValue] = {
        "model": _joined([r.model for r in results]),
        "weights": "random" if "random" in weights else _joined(weights),
        "batch_size": max(r.batch_size for r in results),
        "chosen_by": _joined([r.budget.chosen_by for r in results]),
        "predicted_ms": _ms(max(r.budget.predicted_ms for r in results)),
        "total_ms": _ms(max(r.timings.total for r in results)),
        "inference_ms": _ms(max(r.timings.inference for r in results)),
    }
    budget = results[0].budget.budget_ms
    if budget is not None:
        parameters["budget_ms"] = _ms(budget)
        parameters["budget_met"] = all(bool(r.budget.met) for r in results)
    warning = next((r.warning for r in results if r.warning), None)
    if warning:
        parameters["warning"] = warning
    return parameters


def v2_status(error: SegServeError) -> int:
    """The HTTP status of ``error`` on ``/v2``: the hierarchy's, except that invalid
    parameters are 400, as Triton answers every invalid argument."""
    status = error.kind.http_status
    return 400 if status == 422 else status
