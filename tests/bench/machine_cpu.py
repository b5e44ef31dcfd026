"""Where a machine's CPU went during a measured run: the server, each stack service, the rest.

On a small machine the server under test shares its cores with PostgreSQL, Kafka, Redis and
the load generator, so its requests/s is bounded by what all of them spend per request, not by
the server alone. `snapshot()` before and after a run, `spent()` of the two: CPU seconds per
group, and `per_request()` of that in microseconds.

The stack's services are found by the pid files `infra/stack.sh` writes (PostgreSQL's
postmaster and its backends, the Kafka JVM, redis-server); processes are only read, never
signalled. A process that ended between the snapshots (wrk) falls into `other`, which is the
machine's busy time minus the named groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL = REPO_ROOT / ".local"
PID_FILES = {
    "postgres": LOCAL / "postgres" / "data" / "postmaster.pid",
    "kafka": LOCAL / "run" / "kafka.pid",
    "redis": LOCAL / "run" / "redis.pid",
}
GROUPS = ("server", "postgres", "kafka", "redis", "other")


@dataclass(frozen=True)
class Snapshot:
    busy_s: float  # the machine's non-idle CPU seconds since boot, all cores
    by_pid: dict[int, tuple[str, float]]  # pid -> (group, CPU seconds of that process)


def _pid_from(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_s(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle


def snapshot(server_pid: int | None) -> Snapshot:
    roots: list[tuple[str, int | None]] = [("server", server_pid)]
    roots += [(group, _pid_from(path)) for group, path in PID_FILES.items()]
    by_pid: dict[int, tuple[str, float]] = {}
    for group, pid in roots:
        if pid is None:
            continue
        for proc in _tree(pid):
            cpu = _cpu_s(proc)
            if cpu is not None:
                by_pid.setdefault(proc.pid, (group, cpu))
    return Snapshot(_machine_busy_s(), by_pid)


def spent(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per group between the two snapshots, plus `machine` (all busy time).

    A process seen only afterwards (a PostgreSQL backend that started during the run) counts
    from zero, which overstates it by at most its start-up; one seen only before is left out.
    """
    out = dict.fromkeys(GROUPS, 0.0)
    for pid, (group, cpu) in after.by_pid.items():
        _, was = before.by_pid.get(pid, (group, 0.0))
        out[group] += max(0.0, cpu - was)
    machine = max(0.0, after.busy_s - before.busy_s)
    named = sum(v for k, v in out.items() if k != "other")
    out["other"] = max(0.0, machine - named)
    out["machine"] = machine
    return out


def per_request_us(cpu: dict[str, float], requests: int) -> dict[str, float]:
    """Microseconds of CPU per request in each group; empty when nothing was served."""
    if requests <= 0:
        return {}
    return {group: 1e6 * seconds / requests for group, seconds in cpu.items()}
