"""One bounded wrk run against a server on 127.0.0.1, and the figures its Lua script prints.

wrk is started through the run's `Registry` (its own process group), stops by itself after
`--duration`, and is stopped by the registry if it does not.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.bench.procs import BenchTimeout, Registry

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("wrk_post.lua")
RESULT_MARK = "wrk-result "
PATH = "/v1/transfers"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    non_2xx: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: dict[str, int]
    statuses: dict[str, int]
    started_wall: float  # time.time() around the run, for the server's CPU in that window
    ended_wall: float

    @property
    def responses_2xx(self) -> int:
        return self.requests - self.non_2xx

    @classmethod
    def parse(cls, log: str, started_wall: float, ended_wall: float) -> WrkResult:
        lines = [line for line in log.splitlines() if line.startswith(RESULT_MARK)]
        if not lines:
            raise RuntimeError(f"wrk printed no result line:\n{log[-2000:]}")
        raw: dict[str, Any] = orjson.loads(lines[-1].removeprefix(RESULT_MARK))
        return cls(
            requests=raw["requests"],
            non_2xx=raw["non_2xx"],
            requests_per_s=raw["requests_per_s"],
            p50_ms=raw["p50_us"] / 1000,
            p90_ms=raw["p90_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000,
            max_ms=raw["max_us"] / 1000,
            socket_errors={k: v for k, v in raw["errors"].items() if k != "status"},
            statuses=raw["statuses"],
            started_wall=started_wall,
            ended_wall=ended_wall,
        )


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: `make system-deps` (Debian package wrk)")
    return found


async def run_wrk(
    registry: Registry,
    *,
    port: int,
    connections: int,
    duration_s: float,
    api_key: str,
    key_prefix: str,
    log_path: Path,
) -> WrkResult:
    """POST to 127.0.0.1:`port` for `duration_s` with `connections` open connections.

    `log_path` must be new: wrk's output is appended to it and its last result line is read.
    """
    threads = max(1, min(connections, 2))  # the server and PostgreSQL need the other cores
    argv = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        f"http://127.0.0.1:{port}{PATH}",
        "--",
        api_key,
        key_prefix,
    ]
    started = time.time()
    proc = await registry.spawn("wrk", argv, env={}, cwd=REPO_ROOT, log_path=log_path)
    try:
        await asyncio.wait_for(proc.proc.wait(), timeout=duration_s + 30)
    except TimeoutError:
        await proc.stop(grace_s=5)
        raise BenchTimeout(f"wrk still running {duration_s + 30:.0f}s in") from None
    ended = time.time()
    log = _read(log_path)
    if proc.proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.proc.returncode}: {log[-2000:]}")
    return WrkResult.parse(log, started, ended)


def _read(path: Path) -> str:
    return path.read_text(errors="replace")
