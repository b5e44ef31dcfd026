"""HTTP write throughput: Atlas's `POST /v1/transfers` against a bare aiohttp INSERT and FastAPI.

    .venv/bin/python -m tests.bench.bench_http [--concurrency 16,32] [--warmup 3] [--duration 12]
        [--servers bare,fastapi,atlas,atlas-write] [--timeout 900] [--keep] [--profile]

Defaults can also come from BENCH_HTTP_CONCURRENCY, BENCH_HTTP_WARMUP_S, BENCH_HTTP_DURATION_S.

One run: a fresh database on the stack's PostgreSQL (`atlas migrate`, one API client from
`atlas clients-create`), then each server in turn as its own process on 127.0.0.1, started
once and measured at each concurrency:

- bare: aiohttp, orjson parse, one INSERT into the outbox, 202 (`http_bare.py`);
- fastapi: FastAPI + uvicorn doing Atlas's per-request work (`http_fastapi.py`);
- atlas: `atlas worker` with its limiter set out of reach, in a topic namespace of its own:
  its relay publishes and its agents apply the transfers while it serves (the whole worker);
- atlas-write: the same worker while the bench holds the relay's advisory lock, so its relay
  stands by and nothing reaches the agents: the write path alone. Once measured, the lock is
  let go and the time the relay takes to publish the backlog is printed.

Beside requests/s and latency, each row says where the machine's CPU went per request (the
server, PostgreSQL, Kafka, Redis, the rest): on a small machine they all share the cores.

Each measurement is a wrk warm-up, then a measured wrk run (`wrk_post.lua`: a new
Idempotency-Key per request). The write tables are emptied before each server starts, and a
server is left to settle (CPU idle) before each measurement. For the keyed servers (Atlas,
FastAPI) the 2xx count of each measured run is checked against the outbox rows its keys wrote.
The table is printed and written as JSON to `.local/bench/http-<time>.json`. The run is bounded
by `--timeout`; it stops what it started, drops its database and deletes its topics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import shutil
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from streams.settings import Settings
from tests.bench.atlas_variant import PY_SPY
from tests.bench.http_load import WrkResult, run_wrk
from tests.bench.http_report import (
    Row,
    fmt,
    log_findings,
    ratios,
    render_cpu_table,
    render_table,
)
from tests.bench.http_servers import (
    BenchDatabase,
    Server,
    atlas_server,
    bare_server,
    fastapi_server,
    settle,
    wait_ready,
)
from tests.bench.machine_cpu import per_request_us, snapshot, spent
from tests.bench.procs import Deadline, Measured, Registry, run_bounded
from tests.bench.profile_summary import HTTP_COMPONENTS, render, summarise
from tests.bench.worker_metrics import scrape, summary
from tests.topics import delete_topics_containing

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = REPO_ROOT / ".local" / "bench"
SERVERS = ("bare", "fastapi", "atlas", "atlas-write")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _cpu_pct(proc: Measured, result: WrkResult) -> float | None:
    a, b = proc.cpu_at(result.started_wall), proc.cpu_at(result.ended_wall)
    span = result.ended_wall - result.started_wall
    return None if a is None or b is None or span <= 0 else 100 * (b - a) / span


# ---- one server ----------------------------------------------------------------------------------


async def measure_server(
    server: Server,
    args: argparse.Namespace,
    db: BenchDatabase,
    registry: Registry,
    deadline: Deadline,
    run_dir: Path,
    report: dict[str, Any],
) -> None:
    await db.empty_write_tables()
    async with contextlib.AsyncExitStack() as held:
        if server.relay_held:
            await held.enter_async_context(db.relay_lock_held())
        proc = await registry.spawn(
            server.kind,
            server.argv,
            env=server.env,
            cwd=REPO_ROOT,
            log_path=run_dir / f"{server.kind}.log",
        )
        try:
            ready_s = await wait_ready(server, proc)
            print(f"{server.name}: ready in {ready_s:.1f}s on port {server.port}", flush=True)
            for connections in args.concurrency:
                deadline.bound(args.warmup + args.duration + 60)
                row, extra = await _measure_once(
                    server, proc, connections, args, db, registry, run_dir
                )
                report["rows"].append(asdict(row))
                report["details"].append(extra)
                print(
                    f"  c={connections}: {fmt(row.requests_per_s, ',.0f')} req/s, "
                    f"p99 {fmt(row.p99_ms, '.1f')} ms, non-2xx {row.non_2xx}; {row.detail}",
                    flush=True,
                )
            if server.relay_held:
                await held.aclose()  # the worker's relay takes the lead and publishes
                report["drains"][server.name] = await _drain(db, args.drain_timeout)
        finally:
            await proc.stop(grace_s=30)
            report["log_findings"][server.name] = log_findings(proc.log_path)


async def _drain(db: BenchDatabase, timeout_s: float) -> dict[str, float | int | bool]:
    """How long the relay, once it leads, takes to publish what the measured runs accepted."""
    rows = await db.unpublished()
    started = time.monotonic()
    left = rows
    while left and time.monotonic() - started < timeout_s:
        await asyncio.sleep(0.5)
        left = await db.unpublished()
    took = time.monotonic() - started
    done = {"rows": rows, "seconds": round(took, 1), "left": left, "complete": left == 0}
    print(
        f"  relay released: published {rows - left:,} of {rows:,} rows in {took:.1f}s"
        f" ({(rows - left) / took if took else 0:,.0f} rows/s)",
        flush=True,
    )
    return done


async def _measure_once(
    server: Server,
    proc: Measured,
    connections: int,
    args: argparse.Namespace,
    db: BenchDatabase,
    registry: Registry,
    run_dir: Path,
) -> tuple[Row, dict[str, Any]]:
    tag = f"{server.kind}-c{connections}"

    async def wrk(duration_s: float, key_prefix: str, log_name: str) -> WrkResult:
        return await run_wrk(
            registry,
            port=server.port,
            connections=connections,
            duration_s=duration_s,
            api_key=db.api_key,
            key_prefix=key_prefix,
            log_path=run_dir / log_name,
        )

    atlas = server.kind.startswith("atlas")
    checkpointed = await db.checkpoint()
    if not checkpointed:
        print("  no CHECKPOINT privilege: a checkpoint may land inside this row", flush=True)
    settled = await settle(proc)
    await wrk(args.warmup, f"warm-{tag}-{secrets.token_hex(4)}", f"wrk-{tag}-warmup.log")
    prefix = f"run-{tag}-{secrets.token_hex(4)}"
    profile = run_dir / f"{tag}.pyspy.txt"
    profiler = (
        await registry.spawn_helper(
            [
                *(PY_SPY, "record", "--pid", str(proc.pid), "--duration", str(int(args.duration))),
                *("--rate", "100", "--format", "raw", "--output", str(profile)),
            ],
            run_dir / f"{tag}.py-spy.log",
        )
        if args.profile and atlas
        else None
    )
    metrics_before = await scrape(server.url) if atlas else {}
    before = snapshot(proc.pid)
    result = await wrk(args.duration, prefix, f"wrk-{tag}.log")
    cpu = spent(before, snapshot(proc.pid))
    worker = summary(metrics_before, await scrape(server.url)) if atlas else {}
    if profiler is not None:
        await asyncio.wait_for(profiler.wait(), timeout=30)
    durable: bool | None = None
    detail = "not keyed: no durability check"
    extra: dict[str, Any] = {
        "server": server.name,
        "concurrency": connections,
        "checkpointed_before_run": checkpointed,
        "settled_before_run": settled,
        "wrk": asdict(result),
        "cpu_s": cpu,
        "worker_metrics": worker,
    }
    if server.keyed:
        # A 2xx is sent only after its transaction committed, so its row is visible now;
        # requests wrk abandoned at its end may add rows, never remove them.
        keys, rows = await db.accepted_in_outbox(prefix)
        durable = result.responses_2xx <= rows
        detail = (
            f"{'ok' if durable else 'LOST WRITES'}: {result.responses_2xx} 2xx "
            f"{'<=' if durable else '>'} {rows} outbox rows ({keys} completed keys)"
        )
        extra.update(completed_keys=keys, outbox_rows=rows)
    if worker:
        print(
            "  worker: "
            + ", ".join(f"{k} {fmt(v, '.3g')}" for k, v in worker.items() if v is not None),
            flush=True,
        )
    if profiler is not None and profile.exists():
        extra["profile"] = str(profile)
        extra["profile_summary"] = render(summarise(profile, top=25, rules=HTTP_COMPONENTS))
        print(f"{server.name} profile at c={connections} ({profile}):", flush=True)
        print(extra["profile_summary"], flush=True)
    row = Row(
        kind=server.kind,
        server=server.name,
        concurrency=connections,
        requests=result.requests,
        requests_per_s=result.requests_per_s,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        non_2xx=result.non_2xx,
        socket_errors=sum(result.socket_errors.values()),
        server_cpu_pct=_cpu_pct(proc, result),
        durable=durable,
        detail=detail,
        cpu_us=per_request_us(cpu, result.requests),
        machine_busy_pct=100 * cpu["machine"] / max(result.ended_wall - result.started_wall, 1e-9),
    )
    return row, extra


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    for dist in ("aiohttp", "asyncpg", "faust-streaming", "fastapi", "uvicorn", "uvloop"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "absent"
    return found


# ---- the run -----------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, registry: Registry, deadline: Deadline) -> dict[str, Any]:
    settings = Settings()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"benchhttp-{stamp}-{secrets.token_hex(2)}"
    run_dir = OUT_DIR / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    db = BenchDatabase(settings.database_url.get_secret_value())
    report: dict[str, Any] = {
        "run_id": run_id,
        "started_at": stamp,
        "args": vars(args),
        "versions": _versions(),
        "run_dir": str(run_dir),
        "database": db.name,
        "rows": [],
        "details": [],
        "log_findings": {},
        "drains": {},
    }
    print(f"run {run_id}: database {db.name}, logs in {run_dir}", flush=True)

    def atlas(relay_held: bool) -> Server:
        return atlas_server(
            db.url,
            kafka=settings.kafka_bootstrap_servers,
            redis_url=settings.redis_url.get_secret_value(),
            run_id=run_id,
            data_dir=run_dir / ("atlas-write-data" if relay_held else "atlas-data"),
            relay_held=relay_held,
        )

    servers = {
        "bare": lambda: bare_server(db.url),
        "fastapi": lambda: fastapi_server(db.url),
        "atlas": lambda: atlas(relay_held=False),
        "atlas-write": lambda: atlas(relay_held=True),
    }
    try:
        await db.create()
        for name in args.servers:
            try:
                await measure_server(servers[name](), args, db, registry, deadline, run_dir, report)
            except Exception as exc:  # the next server is still measured
                report.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {exc}")
                print(f"{name}: not (fully) measured: {exc}", file=sys.stderr, flush=True)
    except Exception as exc:  # reported with whatever rows were measured before it
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(f"run failed: {report['error']}", file=sys.stderr, flush=True)
    finally:
        report["ratios"] = ratios([Row(**r) for r in report["rows"]])
        await registry.stop_all()
        if not args.keep:
            await _clean_up(settings, db, run_id, run_dir, report)
    return report


async def _clean_up(
    settings: Settings, db: BenchDatabase, run_id: str, run_dir: Path, report: dict[str, Any]
) -> None:
    try:
        await asyncio.wait_for(db.drop(), timeout=60)
        report["database_dropped"] = True
    except Exception as exc:
        report["database_dropped"] = f"failed: {exc!r}"
    if {"atlas", "atlas-write"} & set(report["args"]["servers"]):
        try:
            report["topics_deleted"] = await asyncio.wait_for(
                delete_topics_containing(settings.kafka_bootstrap_servers, run_id), timeout=30
            )
        except Exception as exc:
            report["topics_deleted"] = f"failed: {exc!r}"
    for data in ("atlas-data", "atlas-write-data"):
        shutil.rmtree(run_dir / data, ignore_errors=True)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _check_loopback(p: argparse.ArgumentParser) -> None:
    s = Settings()
    hosts = [
        ("DATABASE_URL", urlsplit(s.database_url.get_secret_value()).hostname),
        ("REDIS_URL", urlsplit(s.redis_url.get_secret_value()).hostname),
    ] + [
        ("KAFKA_BOOTSTRAP_SERVERS", server.strip().rsplit(":", 1)[0].strip("[]"))
        for server in s.kafka_bootstrap_servers.split(",")
    ]
    remote = [f"{name}={host}" for name, host in hosts if host not in LOOPBACK]
    if remote:
        p.error(f"the benchmark only talks to this machine; not loopback: {', '.join(remote)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--concurrency",
        default=os.environ.get("BENCH_HTTP_CONCURRENCY", "16,32"),
        help="wrk connections, comma separated (BENCH_HTTP_CONCURRENCY)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=_env_float("BENCH_HTTP_WARMUP_S", 3.0),
        help="seconds of wrk before each measured run (BENCH_HTTP_WARMUP_S)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=_env_float("BENCH_HTTP_DURATION_S", 12.0),
        help="seconds of each measured run (BENCH_HTTP_DURATION_S)",
    )
    p.add_argument("--servers", default=",".join(SERVERS), help="comma separated, in order")
    p.add_argument("--timeout", type=float, default=900.0, help="hard bound of the whole run, s")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the relay to publish what atlas-write accepted",
    )
    p.add_argument("--keep", action="store_true", help="keep the database, topics and state")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy Atlas's worker during each measured run (slows it) and print where it went",
    )
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        p.error(f"unknown servers {sorted(unknown)}; choose from {SERVERS}")
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error("--concurrency wants integers, e.g. 16,32")
    if not args.concurrency or min(args.concurrency) < 1:
        p.error("--concurrency wants at least one positive integer")
    if args.warmup < 1 or args.duration < 1:
        p.error("--warmup and --duration are at least 1 s (wrk counts whole seconds)")
    _check_loopback(p)
    return args


def main() -> int:
    args = parse_args()
    report = run_bounded(args.timeout, lambda registry, deadline: bench(args, registry, deadline))
    if report is None:
        return 130

    rows = [Row(**r) for r in report["rows"]]
    print()
    print(render_table(rows))
    print()
    print(render_cpu_table(rows))
    print(
        f"wrk: {args.warmup:.0f}s warm-up, then {args.duration:.0f}s measured, per row; "
        "server CPU % is the server process only (100 = one core)"
    )
    for name, value in report["ratios"].items():
        print(f"{name}: {fmt(value, '.3f')}")
    for server, findings in report["log_findings"].items():
        if findings:
            top = ", ".join(f"{n}x {what}" for what, n in list(findings.items())[:5])
            print(f"{server} log: {top}")
    for name, drain in report["drains"].items():
        print(
            f"{name}: the relay then published {drain['rows'] - drain['left']:,} of "
            f"{drain['rows']:,} accepted writes in {drain['seconds']}s"
        )
    for error in report.get("errors", []):
        print(f"not measured: {error}")
    out = OUT_DIR / f"http-{report['started_at']}.json"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str))
    print(f"\nwritten {out.relative_to(REPO_ROOT)}")
    expected = len(args.servers) * len(args.concurrency)
    complete = len(rows) == expected and not report.get("errors") and "error" not in report
    return 0 if complete and all(r.durable is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
