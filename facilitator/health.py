"""Readiness: the database answers, each RPC URL answers with the right chain id, and each signer can pay
for gas. Also refreshes the signer gauges."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from .service import Facilitator


async def _rpc_status(http: httpx.AsyncClient, url: str, chain_id: int) -> dict[str, Any]:
    try:
        resp = await http.post(
            url,
            content=orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}),
            headers={"content-type": "application/json"},
        )
        got = int(orjson.loads(resp.content)["result"], 16)
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": got == chain_id, **({} if got == chain_id else {"error": f"chain id {got}"})}


async def readiness(fac: Facilitator) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        await asyncio.wait_for(fac.pool.fetchval("SELECT 1"), 2.0)
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    networks: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=2.0) as http:
        for rt in fac.networks.values():
            rpcs = await asyncio.gather(*(_rpc_status(http, u, rt.chain_id) for u in rt.settings.rpc_urls))
            signers: dict[str, Any] = {}
            try:
                replies = await rt.rpc.batch(
                    [("eth_getBalance", [a, "latest"]) for a in rt.signers.addresses]
                    + [("eth_getTransactionCount", [a, "pending"]) for a in rt.signers.addresses]
                )
                n = len(rt.signers.addresses)
                for i, address in enumerate(rt.signers.addresses):
                    balance = int(replies[i], 16) if isinstance(replies[i], str) else None
                    nonce = int(replies[n + i], 16) if isinstance(replies[n + i], str) else None
                    if balance is not None:
                        fac.metrics.signer_balance_wei.labels(rt.network, address).set(balance)
                    if nonce is not None:
                        fac.metrics.signer_nonce.labels(rt.network, address).set(nonce)
                    signers[address] = {
                        "ok": balance is not None and balance >= rt.settings.min_signer_balance_wei,
                        "balanceWei": str(balance) if balance is not None else None,
                        "nonce": nonce,
                    }
            except Exception as exc:
                signers = {a: {"ok": False, "error": type(exc).__name__} for a in rt.signers.addresses}
            networks[rt.network] = {
                "ok": any(r["ok"] for r in rpcs) and any(s["ok"] for s in signers.values()),
                "rpc": dict(zip(_redacted(rt.settings.rpc_urls), rpcs, strict=True)),
                "signers": signers,
            }
    checks["networks"] = networks
    try:
        pending = await fac.ledger.count_in_flight()
        fac.metrics.pending_settlements.set(pending)
        checks["pendingSettlements"] = pending
    except Exception:
        pass
    checks["ok"] = checks["database"]["ok"] and all(n["ok"] for n in networks.values())
    return checks


def _redacted(urls: list[str]) -> list[str]:
    # RPC URLs often embed provider API keys: report scheme and host only.
    out = []
    for i, url in enumerate(urls):
        scheme, _, rest = url.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        out.append(f"{i}:{scheme}://{host}")
    return out
