"""KServe's InferenceGRPCClient against a served segserve (in .venv-clients).

python kserve_grpc.py --url 127.0.0.1:9000 --image photo.jpg --out DIR [--model NAME]
"""

from __future__ import annotations

import asyncio

import grpc
from _kserve_cases import run_cases
from _report import Report, parse_args
from kserve import InferenceGRPCClient


def status(e: BaseException) -> object:
    return e.code().name if isinstance(e, grpc.aio.AioRpcError) else None


async def main() -> None:
    args = parse_args(__doc__ or "")
    report = Report("kserve_grpc", args.out)
    client = InferenceGRPCClient(args.url, timeout=120, retries=2)
    health = {
        "server_live": client.is_server_live,
        "server_ready": client.is_server_ready,
        "model_ready": lambda: client.is_model_ready(args.model),
        "model_ready_unknown": lambda: client.is_model_ready("no-such-model"),
    }
    if args.not_ready_model:
        health["model_ready_not_ready"] = lambda: client.is_model_ready(args.not_ready_model)
    await run_cases(report, args, client.infer, health, status)
    await client.close()
    report.emit()


if __name__ == "__main__":
    asyncio.run(main())
