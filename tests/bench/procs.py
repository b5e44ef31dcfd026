"""Subprocesses the benchmark starts, measures and stops, and the run's time bound.

Every process is started in its own session (so its process group id is its pid) and is only
ever signalled through that group. `Registry.emergency_stop` is the synchronous last resort used
on exit and by the watchdog.
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import psutil


class BenchTimeout(Exception):
    """A bounded wait ran out; the message says which."""


@dataclass
class Deadline:
    """The run's hard time bound; every wait asks it how long it may take."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.started + self.seconds - time.monotonic()

    def bound(self, limit: float) -> float:
        """`limit`, cut to what is left of the run; raises once nothing is left."""
        left = self.remaining()
        if left <= 0:
            raise BenchTimeout(f"the run's {self.seconds:.0f}s bound is used up")
        return min(limit, left)


@dataclass(frozen=True)
class Sample:
    wall: float  # time.time()
    cpu_s: float  # user + system of the process and all its children, live or reaped
    hwm_kb: int  # VmHWM of the process plus that of its live children


def _read_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def sample_process(pid: int) -> Sample | None:
    """CPU seconds and peak RSS of `pid` and its descendants, or None once it is gone."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            t = proc.cpu_times()
            cpu = t.user + t.system + t.children_user + t.children_system
            children = proc.children(recursive=True)
        hwm = _read_hwm_kb(pid)
        for child in children:
            with contextlib.suppress(psutil.Error):
                ct = child.cpu_times()
                cpu += ct.user + ct.system
                hwm += _read_hwm_kb(child.pid)
    except psutil.Error:
        return None
    return Sample(time.time(), cpu, hwm)


@dataclass
class Measured:
    """A subprocess with a background sampler of its CPU and peak RSS."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    interval_s: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def start_sampling(self) -> None:
        self._task = asyncio.create_task(self._sample_loop(), name=f"sample-{self.name}")

    async def _sample_loop(self) -> None:
        while self.alive:
            s = sample_process(self.pid)
            if s is None:
                return
            self.samples.append(s)
            await asyncio.sleep(self.interval_s)

    def snapshot(self) -> Sample | None:
        """Take one sample now (the figures reported are those at the variant's end)."""
        s = sample_process(self.pid)
        if s is not None:
            self.samples.append(s)
        return s if s is not None else (self.samples[-1] if self.samples else None)

    def cpu_at(self, wall: float) -> float | None:
        """Cumulative CPU seconds at `wall`, interpolated between the two nearest samples."""
        pts = self.samples
        if not pts or wall < pts[0].wall:
            return None
        i = bisect.bisect_right([p.wall for p in pts], wall)
        if i >= len(pts):
            return pts[-1].cpu_s
        a, b = pts[i - 1], pts[i]
        span = b.wall - a.wall
        frac = 0.0 if span <= 0 else (wall - a.wall) / span
        return a.cpu_s + frac * (b.cpu_s - a.cpu_s)

    async def stop(self, grace_s: float = 30.0) -> int | None:
        """Close stdin, then SIGTERM to the process group, then SIGKILL; each after `grace_s`.

        Returns the exit code.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            # The variant scripts wait for end-of-input before shutting down on their own.
            self.proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout=grace_s)
        if self.alive:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=grace_s)
            except TimeoutError:
                _signal_group(self.pid, signal.SIGKILL)
                await asyncio.wait_for(self.proc.wait(), timeout=10)
        return self.proc.returncode


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass
class Registry:
    """Every process this run started, so that nothing outlives the run."""

    processes: list[Measured] = field(default_factory=list)
    others: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        stdin_pipe: bool = False,
    ) -> Measured:
        log = _open_log(log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        measured = Measured(name, proc, log_path)
        self.processes.append(measured)
        measured.start_sampling()
        return measured

    async def spawn_helper(self, argv: Sequence[str], log_path: Path) -> asyncio.subprocess.Process:
        """A process that is not measured (the profiler)."""
        log = _open_log(log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.others.append(proc)
        return proc

    async def stop_all(self) -> None:
        for m in self.processes:
            if m.alive:
                with contextlib.suppress(Exception):
                    await m.stop(grace_s=15)
        for p in self.others:
            if p.returncode is None:
                _signal_group(p.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(p.wait(), timeout=10)
                except TimeoutError:
                    _signal_group(p.pid, signal.SIGKILL)

    def emergency_stop(self) -> None:
        """Synchronous: SIGKILL every group still running (exit paths, watchdog)."""
        for pid, rc in [(m.pid, m.proc.returncode) for m in self.processes] + [
            (p.pid, p.returncode) for p in self.others
        ]:
            if rc is None:
                _signal_group(pid, signal.SIGKILL)


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def start_watchdog(seconds: float, on_expiry: Callable[[], None]) -> threading.Timer:
    """Calls `on_expiry` from a thread if the run is still going after `seconds`."""
    timer = threading.Timer(seconds, on_expiry)
    timer.daemon = True
    timer.start()
    return timer


def run_bounded(
    timeout_s: float, bench: Callable[[Registry, Deadline], Awaitable[dict[str, Any]]]
) -> dict[str, Any] | None:
    """Run a benchmark to its report, or None if it was interrupted (SIGINT or SIGTERM).

    Whatever happens, every process it started is stopped on the way out; a watchdog kills
    them and exits (124) if the run is still going a minute past its own bound.
    """
    registry = Registry()
    atexit.register(registry.emergency_stop)

    def expired() -> None:
        print(f"\nwatchdog: still running {timeout_s + 60:.0f}s in; killing", file=sys.stderr)
        registry.emergency_stop()
        os._exit(124)

    async def bounded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await bench(registry, Deadline(timeout_s))

    watchdog = start_watchdog(timeout_s + 60, expired)
    try:
        return asyncio.run(bounded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; processes stopped", file=sys.stderr)
        return None
    finally:
        watchdog.cancel()
        registry.emergency_stop()


async def wait_http_ready(name: str, url: str, proc: Measured, timeout_s: float) -> float:
    """Seconds until `url` answered 200; fails early if `proc` exited."""
    started = time.monotonic()
    last = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while time.monotonic() - started < timeout_s:
            if not proc.alive:
                raise RuntimeError(
                    f"{name} exited with {proc.proc.returncode}; see {proc.log_path}"
                )
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return time.monotonic() - started
                    last = f"{r.status} {(await r.text())[:300]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.5)
    raise BenchTimeout(f"{name} not ready after {timeout_s:.0f}s (last answer: {last})")
