"""Summarise `py-spy record --format raw` output: where a facilitator process spends its CPU.

    .venv/bin/python -m bench.pyspy_top PROFILE.txt [PROFILE2.txt ...] [--top 25]

Prints, as shares of all samples (py-spy samples only threads that are running, so idle waiting on the
event loop is not counted):
- by library area: each sample goes to the leaf-most frame that belongs to a known area (logging,
  httpx, asyncpg, pydantic, ...), so "httpx 30%" means 30% of CPU time was inside httpx code;
- by product function: each sample goes to the leaf-most frame in our own code (facilitator/, shared/),
  i.e. which of our functions caused the work, wherever it ended up;
- self time per function, and inclusive time per function.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+?)(?::(?P<line>\d+))?\)$")

# (area, path fragments): first match from the leaf upward wins; order only matters within one frame.
AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("logging (stdlib logging + structlog + redaction)", ("logging/", "structlog/", "telemetry/logging.py")),
    ("prometheus_client", ("prometheus_client/",)),
    ("opentelemetry", ("opentelemetry/",)),
    ("httpx/httpcore/anyio (JSON-RPC client)", ("httpx/", "httpcore/", "anyio/", "h11/", "sniffio/")),
    ("web3.py/requests/urllib3", ("web3/", "requests/", "urllib3/")),
    ("asyncpg (PostgreSQL)", ("asyncpg/",)),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    (
        "eth-account/eth-keys/rlp (tx signing)",
        ("eth_account/", "eth_keys/", "rlp/", "eth_rlp/", "eth_typing/"),
    ),
    ("eth-abi/eth-utils/hexbytes", ("eth_abi/", "eth_utils/", "hexbytes/", "eth_hash/")),
    ("coincurve", ("coincurve/",)),
    ("orjson/json", ("orjson", "json/")),
    ("starlette", ("starlette/",)),
    ("uvicorn/httptools", ("uvicorn/", "httptools/")),
    ("x402 SDK", ("x402/",)),
    ("asyncio/uvloop", ("asyncio/", "uvloop/")),
    ("our code", ("facilitator/", "shared/", "bench/")),
]

OUR_CODE = ("facilitator/", "shared/")


def parse_frame(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m["func"], m["file"]


def area_of(file: str) -> str | None:
    for area, parts in AREAS:
        if any(p in file for p in parts):
            return area
    return None


def load(paths: list[Path]) -> list[tuple[list[tuple[str, str]], int]]:
    stacks: list[tuple[list[tuple[str, str]], int]] = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            line = line.rstrip()
            if not line:
                continue
            stack_text, _, count_text = line.rpartition(" ")
            try:
                count = int(count_text)
            except ValueError:
                continue
            frames = [parse_frame(f) for f in stack_text.split(";")]
            stacks.append((frames, count))
    return stacks


def summarise(stacks: list[tuple[list[tuple[str, str]], int]], top: int) -> str:
    total = sum(c for _, c in stacks)
    if not total:
        return "no samples"
    by_area: Counter[str] = Counter()
    by_ours: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        leaf_func, leaf_file = frames[-1]
        self_time[f"{leaf_func} ({leaf_file})"] += count
        seen: set[str] = set()
        for func, file in frames:
            key = f"{func} ({file})"
            if key not in seen:
                inclusive[key] += count
                seen.add(key)
        area = next((a for _, f in reversed(frames) if (a := area_of(f))), "other")
        by_area[area] += count
        ours = next((f"{fn} ({fl})" for fn, fl in reversed(frames) if any(p in fl for p in OUR_CODE)), None)
        by_ours[ours or "(no product frame: server, event loop)"] += count

    def table(title: str, counter: Counter[str], n: int) -> list[str]:
        rows = [f"\n{title}", "| share | samples | where |", "|---:|---:|---|"]
        for key, count in counter.most_common(n):
            rows.append(f"| {100 * count / total:5.1f}% | {count} | {key} |")
        return rows

    out = [f"{total} samples"]
    out += table("CPU by library area (leaf-most known frame)", by_area, len(by_area))
    out += table("CPU by product function (leaf-most frame in facilitator/ or shared/)", by_ours, top)
    out += table("Self time (leaf function)", self_time, top)
    interesting = Counter(
        {
            k: v
            for k, v in inclusive.items()
            if any(
                p in k
                for p in (
                    *OUR_CODE,
                    "httpx/",
                    "asyncpg/",
                    "logging/",
                    "structlog/",
                    "pydantic",
                    "eth_account/",
                    "starlette/",
                    "prometheus",
                )
            )
        }
    )
    out += table("Inclusive time (product code and main libraries)", interesting, top)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profiles", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args(argv)
    print(summarise(load(a.profiles), a.top))


if __name__ == "__main__":
    main()
