"""The official x402 Python SDK's facilitator core behind the same HTTP surface as ours, for comparison.

POST /verify and POST /settle take the same JSON bodies (`{x402Version, paymentPayload,
paymentRequirements}`), parse them into the SDK's pydantic models and call the SDK's facilitator with
its EVM `exact` scheme (`ExactEvmScheme` + `FacilitatorWeb3Signer`, web3.py, one signer key).

The SDK has an `async` facilitator (`x402.x402Facilitator`), but only its hooks are awaited: the scheme's
`verify`/`settle` are plain synchronous functions doing blocking web3.py HTTP calls (see
x402/facilitator_base.py `_verify_v2` and x402/mechanisms/evm/exact/facilitator.py). Awaiting it on the
server's event loop therefore serialises every request behind the previous one's RPC round trips. So:

- mode "thread" (default): `x402FacilitatorSync` run in a thread pool (`--sdk-threads` workers), the
  usual way to serve blocking code from an async server;
- mode "inline": `await x402Facilitator.verify(...)` directly on the event loop, as the SDK's async
  class invites; shown for completeness.

Errors the SDK raises (unknown scheme, bad payload) become HTTP 400 with the message, never a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from x402 import x402Facilitator, x402FacilitatorSync
from x402.mechanisms.evm.exact.register import register_exact_evm_facilitator
from x402.mechanisms.evm.signers import FacilitatorWeb3Signer
from x402.schemas import PaymentPayload, PaymentPayloadV1, PaymentRequirements, PaymentRequirementsV1


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _parse(body: Any) -> tuple[Any, Any]:
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    payload, requirements = body.get("paymentPayload"), body.get("paymentRequirements")
    if not isinstance(payload, dict) or not isinstance(requirements, dict):
        raise ValueError("paymentPayload and paymentRequirements must both be JSON objects")
    version = payload.get("x402Version")
    if version == 1:
        return PaymentPayloadV1.model_validate(payload), PaymentRequirementsV1.model_validate(requirements)
    if version == 2:
        return PaymentPayload.model_validate(payload), PaymentRequirements.model_validate(requirements)
    raise ValueError(f"unsupported x402Version {version!r}")


def create_app(
    *,
    private_key: str,
    rpc_url: str,
    network: str,
    mode: str = "thread",
    threads: int = 32,
    confirmation_timeout_seconds: float = 120.0,
    simulate_in_settle: bool = False,
) -> Starlette:
    """The SDK facilitator as a Starlette app. `network` is CAIP-2 (e.g. eip155:84532)."""
    if mode not in ("thread", "inline"):
        raise ValueError("mode must be 'thread' or 'inline'")
    signer = FacilitatorWeb3Signer(
        private_key=private_key,
        rpc_url=rpc_url,
        confirmation_timeout_seconds=confirmation_timeout_seconds,
    )
    facilitator: Any = x402FacilitatorSync() if mode == "thread" else x402Facilitator()
    register_exact_evm_facilitator(
        facilitator, signer, networks=network, simulate_in_settle=simulate_in_settle
    )
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sdk") if mode == "thread" else None

    async def call(method: str, payload: Any, requirements: Any) -> Any:
        if executor is not None:
            fn = getattr(facilitator, method)
            return await asyncio.get_running_loop().run_in_executor(executor, fn, payload, requirements)
        return await getattr(facilitator, method)(payload, requirements)

    async def handle(request: Request, method: str) -> Response:
        try:
            payload, requirements = _parse(orjson.loads(await request.body()))
        except (ValueError, orjson.JSONDecodeError) as exc:  # pydantic's ValidationError is a ValueError
            return _json({"error": str(exc)[:500]}, 400)
        try:
            result = await call(method, payload, requirements)
        except Exception as exc:  # SchemeNotFoundError, PaymentAbortedError, anything unexpected
            return _json({"error": f"{type(exc).__name__}: {exc}"[:500]}, 400)
        return _json(result.model_dump(by_alias=True, exclude_none=True, mode="json"))

    async def verify(request: Request) -> Response:
        return await handle(request, "verify")

    async def settle(request: Request) -> Response:
        return await handle(request, "settle")

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "mode": mode, "signer": signer.address})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    # The SDK logs every signature check at INFO (verify_typed_data); keep the default WARNING level.
    logging.getLogger("x402").setLevel(logging.WARNING)
    return Starlette(
        routes=[
            Route("/verify", verify, methods=["POST"]),
            Route("/settle", settle, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
