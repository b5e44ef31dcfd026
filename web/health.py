"""Dependency checks and their aggregation after draft-inadarei-api-health-check.

Liveness asks nothing of dependencies; readiness and `/health` run every check concurrently,
each bounded by its own timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["pass", "warn", "fail"]
_RANK: dict[Status, int] = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class CheckResult:
    key: str  # e.g. "postgres:responseTime"
    component_type: str
    status: Status
    observed_value: float | int | None
    observed_unit: str
    time: str
    output: str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "componentType": self.component_type,
            "observedValue": self.observed_value,
            "observedUnit": self.observed_unit,
            "status": self.status,
            "time": self.time,
        }
        if self.output:
            body["output"] = self.output
        return body


Probe = Callable[[], Awaitable[float | int | None]]


@dataclass(frozen=True)
class Check:
    """One named probe: it returns an observed value or raises.

    A `timed` probe reports its response time in ms instead of what it returned.
    """

    key: str
    component_type: str
    probe: Probe
    timeout_s: float
    observed_unit: str = "ms"
    timed: bool = True
    failure_status: Status = "fail"

    async def run(self) -> CheckResult:
        started = time.perf_counter()
        output: str | None = None
        value: float | int | None = None
        status: Status = "pass"
        try:
            result = await asyncio.wait_for(self.probe(), self.timeout_s)
            value = round((time.perf_counter() - started) * 1000, 2) if self.timed else result
        except TimeoutError:
            status, output = self.failure_status, f"no answer within {self.timeout_s:g}s"
        except Exception as exc:  # a failed probe is a health result, never an error
            status, output = self.failure_status, f"{type(exc).__name__}: {exc}"[:500]
        return CheckResult(
            key=self.key,
            component_type=self.component_type,
            status=status,
            observed_value=value,
            observed_unit=self.observed_unit,
            time=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            output=output,
        )


def overall(results: Sequence[CheckResult]) -> Status:
    """The worst status among the checks; `pass` when there are none."""
    worst: Status = "pass"
    for r in results:
        if _RANK[r.status] > _RANK[worst]:
            worst = r.status
    return worst


def health_document(
    results: Sequence[CheckResult], *, service_id: str, version: str
) -> dict[str, Any]:
    checks: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        checks.setdefault(r.key, []).append(r.as_json())
    return {
        "status": overall(results),
        "version": version,
        "serviceId": service_id,
        "description": "Atlas ledger worker",
        "checks": checks,
    }


async def run_checks(checks: Sequence[Check]) -> list[CheckResult]:
    return list(await asyncio.gather(*(c.run() for c in checks)))
