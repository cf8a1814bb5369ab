"""Process plumbing for the benchmark: facilitator server processes, CPU accounting, py-spy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import psutil

from bench.loadgen import http_get

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def run_exit(main: Coroutine[Any, Any, int]) -> NoReturn:
    """Runs a benchmark's main coroutine on uvloop (as the servers run) and exits with its code."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        code = runner.run(main)
    raise SystemExit(code)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_server(name: str, config: dict[str, Any], workdir: Path, timeout: float = 90.0) -> Server:  # noqa: ASYNC109
    """Start `python -m bench.serve` with `config` and wait until GET /health answers 200."""
    port = free_port()
    config = {**config, "port": port}
    cfg_path = workdir / f"{name}.json"
    cfg_path.write_text(json.dumps(config))
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "bench.serve", str(cfg_path)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    server = Server(name, port, popen, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode} during start-up:\n{server.log_tail()}")
        with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
            status, _ = await http_get("127.0.0.1", port, "/health", timeout=2.0)
            if status == 200:
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not become healthy in {timeout}s:\n{server.log_tail()}")
        await asyncio.sleep(0.1)


def postgres_pids(data_dir: Path) -> list[int]:
    """The postmaster of the embedded server in `data_dir` and all its children (backends, workers)."""
    pid_file = data_dir / "postmaster.pid"
    try:
        root = int(pid_file.read_text().split("\n", 1)[0])
        proc = psutil.Process(root)
        return [root, *(c.pid for c in proc.children(recursive=True))]
    except (OSError, ValueError, psutil.Error):
        return []


def child_pids(pid: int) -> list[int]:
    """Worker processes of a multi-process server."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


class CpuMeter:
    """CPU seconds per named group of processes, and of the whole machine, between two snapshots."""

    def __init__(self, groups: dict[str, Any]) -> None:
        # Each group is a callable returning pids (re-evaluated per snapshot: backends come and go).
        self.groups = groups

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pids_fn in self.groups.items():
            total = 0.0
            for pid in pids_fn():
                with contextlib.suppress(psutil.Error):
                    t = psutil.Process(pid).cpu_times()
                    total += t.user + t.system
            out[name] = total
        # Every process, so CPU used by anything else on this (shared, noisy) machine can be named.
        for proc in psutil.process_iter(["pid", "name", "cpu_times"]):
            t = proc.info.get("cpu_times")
            if t is not None:
                out[f"_pid_{proc.info['pid']}_{proc.info.get('name') or '?'}"] = t.user + t.system
        m = psutil.cpu_times()
        out["_machine_busy"] = m.user + m.system + m.nice + getattr(m, "irq", 0) + getattr(m, "softirq", 0)
        out["_wall"] = time.monotonic()
        return out

    @staticmethod
    def percent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Percent of one core per group over the interval ("machine" is all cores, 200% max on 2)."""
        wall = after["_wall"] - before["_wall"]
        if wall <= 0:
            return {}
        out = {k: 100 * (after[k] - before[k]) / wall for k in after if not k.startswith("_") and k in before}
        busy = 100 * (after["_machine_busy"] - before["_machine_busy"]) / wall
        out["machine"] = busy
        out["other"] = max(0.0, busy - sum(v for k, v in out.items() if k != "machine"))
        return out

    def top_others(
        self, before: dict[str, float], after: dict[str, float], exclude: set[int], n: int = 3
    ) -> str:
        """The busiest processes outside the benchmark's own, e.g. "pytest 85%, postgres 10%"."""
        wall = after["_wall"] - before["_wall"]
        if wall <= 0:
            return ""
        deltas: list[tuple[float, str]] = []
        for key, value in after.items():
            if not key.startswith("_pid_") or key not in before:
                continue
            _, _, rest = key.partition("_pid_")
            pid_text, _, name = rest.partition("_")
            if int(pid_text) in exclude:
                continue
            pct = 100 * (value - before[key]) / wall
            if pct >= 5:
                deltas.append((pct, f"{name}[{pid_text}]"))
        deltas.sort(reverse=True)
        return ", ".join(f"{name} {pct:.0f}%" for pct, name in deltas[:n])

    def own_pids(self) -> set[int]:
        pids: set[int] = set()
        for pids_fn in self.groups.values():
            pids.update(pids_fn())
        return pids


class PySpy:
    """`py-spy record` of one process for the duration of a block, raw (collapsed) stacks to `out`."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self._popen: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        local = Path(sys.executable).parent / "py-spy"
        return str(local) if local.exists() else shutil.which("py-spy")

    def start(self) -> None:
        exe = self.binary()
        if exe is None:
            raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
        self._popen = subprocess.Popen(
            [
                exe,
                "record",
                "-p",
                str(self.pid),
                "-r",
                str(self.rate),
                "--format",
                "raw",
                "-o",
                str(self.out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.spy_pid: int | None = self._popen.pid
        time.sleep(0.3)  # let it attach before the clock starts

    def stop(self) -> None:
        if self._popen is None:
            return
        self._popen.send_signal(signal.SIGINT)
        try:
            self._popen.wait(30)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
        self._popen = None
