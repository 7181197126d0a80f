"""KServe's InferenceRESTClient (protocol v2) against a served segserve (in .venv-clients).

python kserve_rest.py --url http://127.0.0.1:8000 --image photo.jpg --out DIR [--model NAME]
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from _kserve_cases import run_cases
from _report import Report, parse_args
from kserve import InferenceRESTClient, RESTConfig


def status(e: BaseException) -> object:
    return e.response.status_code if isinstance(e, httpx.HTTPStatusError) else None


async def main() -> None:
    args = parse_args(__doc__ or "")
    base = args.url if args.url.startswith("http") else f"http://{args.url}"
    report = Report("kserve_rest", args.out)
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120, retries=0))
    health = {
        "server_live": lambda: client.is_server_live(base),
        "server_ready": lambda: client.is_server_ready(base),
        "model_ready": lambda: client.is_model_ready(base, args.model),
        "model_ready_unknown": lambda: client.is_model_ready(base, "no-such-model"),
    }
    if args.not_ready_model:
        health["model_ready_not_ready"] = lambda: client.is_model_ready(base, args.not_ready_model)

    async def infer(request: Any) -> Any:
        return await client.infer(base, request, model_name=request.model_name)

    await run_cases(report, args, infer, health, status)
    await client.close()
    report.emit()


if __name__ == "__main__":
    asyncio.run(main())
