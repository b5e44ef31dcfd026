"""The HTTP write benchmark's result rows, its table, ratios, and what the servers logged."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

_NUMBER = re.compile(r"\d+")


@dataclass
class Row:
    kind: str  # bare, fastapi, atlas, atlas-write
    server: str
    concurrency: int
    requests: int
    requests_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    non_2xx: int | None
    socket_errors: int | None
    server_cpu_pct: float | None  # the server process during the measured run, 100 = one core
    durable: bool | None  # 2xx <= outbox rows of the run's keys; None when not checked
    detail: str
    # CPU microseconds per request during the measured run, by group (tests/bench/machine_cpu)
    cpu_us: dict[str, float] = field(default_factory=dict)
    machine_busy_pct: float | None = None  # all cores, 100 = one core


def fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(rows: list[Row]) -> str:
    header = ["server", "conc", "req/s", "p50 ms", "p99 ms", "non-2xx", "sock err", "server CPU %"]
    body = [
        [
            r.server,
            str(r.concurrency),
            fmt(r.requests_per_s, ",.0f"),
            fmt(r.p50_ms, ".2f"),
            fmt(r.p99_ms, ".2f"),
            fmt(r.non_2xx, "d"),
            fmt(r.socket_errors, "d"),
            fmt(r.server_cpu_pct, ".0f"),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " | durable"]
    lines.append("-+-".join("-" * w for w in widths) + "-+--------")
    for r, cells in zip(rows, body, strict=True):
        text = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        lines.append(" | ".join(text) + f" | {r.detail}")
    return "\n".join(lines)


CPU_GROUPS = ("server", "postgres", "kafka", "redis", "other", "machine")


def render_cpu_table(rows: list[Row]) -> str:
    """Where each request's CPU went, machine-wide: the peers' budgets side by side."""
    header = ["server", "conc", *(f"{g} us" for g in CPU_GROUPS), "machine busy %"]
    body = [
        [
            r.server,
            str(r.concurrency),
            *(fmt(r.cpu_us.get(g), ".0f") for g in CPU_GROUPS),
            fmt(r.machine_busy_pct, ".0f"),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    for cells in body:
        lines.append(
            " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    lines.append(
        "CPU per request (us) during the measured run; other = wrk and the rest of the machine; "
        "machine busy % is all cores (100 = one core)"
    )
    return "\n".join(lines)


def ratios(rows: list[Row]) -> dict[str, float | None]:
    """Each Atlas variant against each peer, per concurrency."""
    by = {(r.kind, r.concurrency): r for r in rows}
    out: dict[str, float | None] = {}
    for kind in ("atlas", "atlas-write"):
        for c in sorted({r.concurrency for r in rows}):
            atlas, bare = by.get((kind, c)), by.get(("bare", c))
            fastapi = by.get(("fastapi", c))
            if atlas is None:
                continue
            if bare is not None:
                out[f"c={c} {kind}/bare req/s"] = _ratio(atlas.requests_per_s, bare.requests_per_s)
            if fastapi is not None:
                out[f"c={c} {kind}/fastapi req/s"] = _ratio(
                    atlas.requests_per_s, fastapi.requests_per_s
                )
            if bare is not None:
                out[f"c={c} {kind} p99 / bare p99"] = _ratio(atlas.p99_ms, bare.p99_ms)
    return out


def log_findings(path: Path) -> dict[str, int]:
    """Warnings and errors of a server's JSON log lines, counted by level and event."""
    found: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("level") in ("warning", "error"):
                event = _NUMBER.sub("N", str(record.get("event")))[:80]
                found[f"{record['level']}: {event}"] += 1
    return dict(found.most_common())


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None
