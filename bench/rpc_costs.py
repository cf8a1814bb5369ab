"""What one JSON-RPC call costs, on both sides of the wire: Anvil's CPU per call and the Python client's.

    .venv/bin/python -m bench.rpc_costs [--calls 1000] [--sniffio-shim]

Sends `calls` distinct `transferWithAuthorization` simulations (the call verify and settle make) to a
fresh DevChain as `eth_call` and as `eth_estimateGas`, one HTTP request per call (1, 8 or 32 in flight)
or as JSON-RPC batches, through httpx (what shared/rpc/client.py uses) and through the lean asyncio client
of bench/loadgen.py. CPU is read from /proc for Anvil and for this process, so "us/call" is CPU time, not
latency. `--sniffio-shim` gives httpcore a stand-in `sniffio` module (see bench/serve.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import types
from typing import Any

import httpx
import orjson
import psutil
from eth_account import Account

from bench.loadgen import Connection, build_request
from bench.payments import make_payer
from shared.devchain.chain import DevChain
from shared.evm import calls
from shared.evm.eip712 import Authorization, authorization_digest
from shared.evm.signatures import parse_ecdsa

SHAPES = ((1, 1), (1, 8), (1, 32), (32, 2), (100, 1))  # (calls per HTTP request, requests in flight)


def transfer_calldata(chain: DevChain, n: int) -> list[bytes]:
    payer = make_payer(chain.new_payer(10**12).key.hex())
    now = int(time.time())
    out = []
    for _ in range(n):
        auth = Authorization(
            payer.address,
            "0x000000000000000000000000000000000000bEEF",
            1000,
            now - 600,
            now + 3600,
            os.urandom(32),
        )
        digest = authorization_digest(
            auth,
            name=chain.usdc.name,
            version=chain.usdc.version,
            chain_id=chain.chain_id,
            token=chain.usdc.address,
        )
        raw = payer.key.sign_recoverable(digest, hasher=None)
        out.append(calls.transfer_with_authorization_vrs(auth, parse_ecdsa(raw[:64] + bytes([raw[64] + 27]))))
    return out


async def measure(
    chain: DevChain, datas: list[bytes], method: str, batch: int, inflight: int, client: str
) -> tuple[float, float, float]:
    sender = Account.from_key(chain.facilitator_keys[0]).address

    def request(i: int, data: bytes) -> dict[str, Any]:
        tx = {"from": sender, "to": chain.usdc.address, "data": "0x" + data.hex()}
        params: list[Any] = [tx, "latest"] if method == "eth_call" else [tx]
        return {"jsonrpc": "2.0", "id": i, "method": method, "params": params}

    bodies = []
    for start in range(0, len(datas), batch):
        part = [request(i, d) for i, d in enumerate(datas[start : start + batch])]
        bodies.append(orjson.dumps(part if batch > 1 else part[0]))
    host, port = "127.0.0.1", int(chain.rpc_url.rsplit(":", 1)[1])
    anvil, me = psutil.Process(chain.anvil.pid), psutil.Process()

    def check(reply: bytes) -> None:
        x = orjson.loads(reply)
        first = x[0] if isinstance(x, list) else x
        if "result" not in first:
            raise RuntimeError(f"{method} failed: {first}")

    a0, m0, t0 = anvil.cpu_times(), me.cpu_times(), time.perf_counter()
    queue = iter(bodies)
    if client == "httpx":
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=inflight)) as http:

            async def worker() -> None:
                for body in queue:
                    r = await http.post(
                        chain.rpc_url, content=body, headers={"content-type": "application/json"}
                    )
                    check(r.content)

            await asyncio.gather(*(worker() for _ in range(inflight)))
    else:

        async def worker() -> None:
            conn = Connection(host, port)
            for body in queue:
                _, reply = await conn.request(build_request(host, port, "/", body))
                check(reply)
            await conn.close()

        await asyncio.gather(*(worker() for _ in range(inflight)))
    a1, m1, t1 = anvil.cpu_times(), me.cpu_times(), time.perf_counter()
    n = len(datas)
    return (
        n / (t1 - t0),
        (a1.user + a1.system - a0.user - a0.system) / n * 1e6,
        (m1.user + m1.system - m0.user - m0.system) / n * 1e6,
    )


async def amain(args: argparse.Namespace) -> None:
    chain = DevChain.start()
    try:
        datas = transfer_calldata(chain, args.calls)
        columns = ["client", "method", "calls/HTTP request", "in flight", "calls/s", "Anvil CPU us/call"]
        print("| " + " | ".join([*columns, "client CPU us/call"]) + " |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for client in ("raw", "httpx"):
            for method in ("eth_call", "eth_estimateGas"):
                for batch, inflight in SHAPES:
                    rate, anvil_us, client_us = await measure(chain, datas, method, batch, inflight, client)
                    print(
                        f"| {client} | {method} | {batch} | {inflight} | {rate:.0f} "
                        f"| {anvil_us:.0f} | {client_us:.0f} |",
                        flush=True,
                    )
    finally:
        chain.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--sniffio-shim", action="store_true")
    args = p.parse_args()
    if args.sniffio_shim and "sniffio" not in sys.modules:
        shim = types.ModuleType("sniffio")
        shim.current_async_library = lambda: "asyncio"  # type: ignore[attr-defined]
        sys.modules["sniffio"] = shim
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
