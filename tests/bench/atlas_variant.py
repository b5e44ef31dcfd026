"""Variant (a): Atlas's own payments pipeline, `atlas worker` as a subprocess.

The worker's ledger agent reads payments, account commands and transfer legs as one stream,
time-ordered per partition (`streams.batches`). The accounts are still opened in a set-up run
first, so that the measured run is the payments alone:

1. set-up: the caller has produced one `OpenAccount` command per account straight to the
   commands topic (`workload.commands`, in the worker's wire form). Start the worker (its
   consumer group is new) and wait until the group's committed offsets on the commands topic
   reach their end offsets: every command was handled, and (commit-safe transport) every
   record it wrote acknowledged before the offsets moved. Then read back a sample of the
   accounts (all of them up to `SETUP_SAMPLE`, else a seeded sample plus the last one opened)
   until each answers `GET /v1/accounts/{id}`, and stop the worker with SIGTERM. The payments
   topic is still empty, so the group has no offsets on it. (100,000 accounts: no 100,000
   GETs; the measured run's balance check still reads every account.)
2. the payments are produced (by the caller).
3. measured run: the same worker configuration (same group, same state folder) starts again
   and reads the payments from the beginning. Throughput is measured on `atlas.outcomes.v1`
   (one record per payment delivery): the broker timestamps of the first and the last outcome.
   CPU and peak RSS are those of this second process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.bench.procs import BenchTimeout, Deadline, Measured, Registry, wait_http_ready
from tests.bench.workload import Workload

REPO_ROOT = Path(__file__).resolve().parents[2]
ATLAS = str(Path(sys.executable).with_name("atlas"))
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
PAYMENTS = "atlas.payments.v1"
COMMANDS = "atlas.ledger.commands.v1"
OUTCOMES = "atlas.outcomes.v1"
_DIGITS = re.compile(r"\d+")
SETUP_SAMPLE = 1_000  # accounts read back over HTTP at the end of the set-up run
READ_CONCURRENCY = 32  # GETs in flight when every balance is read


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class AtlasConfig:
    bootstrap: str
    app_name: str  # consumer group and changelog prefix
    topic_prefix: str
    partitions: int
    data_dir: Path
    log_dir: Path
    port: int
    overrides: tuple[tuple[str, str], ...] = ()  # extra ATLAS_* settings (diagnostic runs)
    api_key: str = ""  # for the /v1 reads; see `with_api_client`

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            ATLAS_APP_NAME=self.app_name,
            ATLAS_TOPIC_PREFIX=self.topic_prefix,
            ATLAS_TOPIC_PARTITIONS=str(self.partitions),
            ATLAS_WEB_PORT=str(self.port),
            ATLAS_DATA_DIR=str(self.data_dir),
            ATLAS_LOG_LEVEL="WARNING",
            # The harness reads every account over /v1 while it waits: not the limiter's job.
            ATLAS_RATE_LIMIT_PER_S="100000",
            ATLAS_RATE_LIMIT_BURST="100000",
            # The defaults (rocksdb:// store, batch size, linger) are left as the product has them.
        )
        env.update(self.overrides)
        return env

    @staticmethod
    def argv() -> list[str]:
        return [ATLAS, "worker"]  # its level comes from ATLAS_LOG_LEVEL


# ---- HTTP --------------------------------------------------------------------------------------


async def with_api_client(cfg: AtlasConfig) -> AtlasConfig:
    """`cfg` with the key of a new API client (`atlas clients-create`) for the /v1 reads."""
    proc = await asyncio.create_subprocess_exec(
        ATLAS,
        "clients-create",
        f"bench-{cfg.app_name}",
        env=cfg.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode != 0:
        raise RuntimeError(f"atlas clients-create failed: {err.decode()[-500:]}")
    keys = [
        line.split(":", 1)[1].strip()
        for line in out.decode().splitlines()
        if line.startswith("key:")
    ]
    if not keys:
        raise RuntimeError("atlas clients-create printed no key")
    return replace(cfg, api_key=keys[0])


async def get_accounts(
    http: aiohttp.ClientSession,
    cfg: AtlasConfig,
    ids: list[str],
    concurrency: int = READ_CONCURRENCY,
) -> dict[str, tuple[int, Any]]:
    """GET /v1/accounts/{id} for each id: id -> (status, body or None)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(account_id: str) -> tuple[str, tuple[int, Any]]:
        async with gate:
            try:
                headers = {"Authorization": f"Bearer {cfg.api_key}"}
                async with http.get(f"{cfg.url}/v1/accounts/{account_id}", headers=headers) as r:
                    body = await r.read()
                    return account_id, (r.status, orjson.loads(body) if r.status == 200 else None)
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
                return account_id, (0, repr(exc))

    return dict(await asyncio.gather(*(one(a) for a in ids)))


async def wait_accounts_open(
    http: aiohttp.ClientSession,
    cfg: AtlasConfig,
    worker: Measured,
    ids: list[str],
    timeout_s: float,
) -> None:
    missing = list(ids)
    started = time.monotonic()
    while missing:
        if time.monotonic() - started > timeout_s:
            raise BenchTimeout(f"{len(missing)} accounts still not open after {timeout_s:.0f}s")
        if not worker.alive:
            raise RuntimeError(
                f"worker exited with {worker.proc.returncode}; see {worker.log_path}"
            )
        answers = await get_accounts(http, cfg, missing)
        missing = [a for a, (status, _) in answers.items() if status != 200]
        if missing:
            await asyncio.sleep(0.5)


def setup_sample(accounts: list[str], size: int = SETUP_SAMPLE, seed: int = 0) -> list[str]:
    """The accounts the set-up reads back: all of them up to `size`, else a seeded sample that
    includes the last one opened (the commands are produced in account order)."""
    if len(accounts) <= size:
        return list(accounts)
    picked = random.Random(seed).sample(range(len(accounts) - 1), size - 1)
    return [accounts[i] for i in sorted(picked)] + [accounts[-1]]


async def commands_lag(
    admin: AIOKafkaAdminClient, cfg: AtlasConfig, ends: dict[TopicPartition, int]
) -> int:
    """Commands the worker's group has not committed yet (a partition without a committed
    offset counts from 0: the topic is new)."""
    committed = await admin.list_consumer_group_offsets(cfg.app_name, partitions=list(ends))
    lag = 0
    for tp, end in ends.items():
        meta = committed.get(tp)
        offset = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag += max(0, end - offset)
    return lag


async def wait_commands_committed(cfg: AtlasConfig, worker: Measured, timeout_s: float) -> int:
    """Until the group has committed every command on the commands topic; returns how many."""
    topic = cfg.topic_prefix + COMMANDS
    tps = [TopicPartition(topic, p) for p in range(cfg.partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap, request_timeout_ms=30_000)
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False)
    await admin.start()
    try:
        await consumer.start()
        try:
            ends = await consumer.end_offsets(tps)  # produced before the worker started
        finally:
            await consumer.stop()
        started = time.monotonic()
        while (lag := await commands_lag(admin, cfg, ends)) > 0:
            if time.monotonic() - started > timeout_s:
                raise BenchTimeout(
                    f"{lag} of {sum(ends.values())} account commands still not committed "
                    f"after {timeout_s:.0f}s"
                )
            if not worker.alive:
                raise RuntimeError(
                    f"worker exited with {worker.proc.returncode}; see {worker.log_path}"
                )
            await asyncio.sleep(0.5)
        return sum(ends.values())
    finally:
        await admin.close()


# ---- outcomes ----------------------------------------------------------------------------------


@dataclass
class Outcomes:
    """What the worker published on the outcomes topic."""

    count: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    first_seen_wall: float | None = None  # when this process saw the first one
    applied_ids: Counter[str] = field(default_factory=Counter)
    duplicate_ids: set[str] = field(default_factory=set)
    rejections: Counter[str] = field(default_factory=Counter)
    undecodable: int = 0
    timestamps_ms: list[int] = field(default_factory=list)

    def rate_by_fifth(self) -> list[float | None]:
        """Events/s over each fifth of the outcomes, in timestamp order: does the rate hold?"""
        ts = sorted(self.timestamps_ms)
        step = len(ts) // 5
        if step == 0:
            return []
        rates: list[float | None] = []
        for k in range(5):
            span_s = (ts[min((k + 1) * step, len(ts) - 1)] - ts[k * step]) / 1000
            rates.append(round(step / span_s) if span_s > 0 else None)
        return rates

    def add(self, timestamp_ms: int, value: bytes) -> None:
        self.count += 1
        self.timestamps_ms.append(timestamp_ms)
        if self.first_ts_ms is None or timestamp_ms < self.first_ts_ms:
            self.first_ts_ms = timestamp_ms
        if self.last_ts_ms is None or timestamp_ms > self.last_ts_ms:
            self.last_ts_ms = timestamp_ms
        if self.first_seen_wall is None:
            self.first_seen_wall = time.time()
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            self.undecodable += 1
            return
        status = str(body.get("status"))
        self.by_status[status] += 1
        if status == "applied":
            self.applied_ids[body["event_id"]] += 1
        elif status == "duplicate":
            self.duplicate_ids.add(body["event_id"])
        elif status == "rejected":
            self.rejections[str(body.get("reason"))] += 1


async def collect_outcomes(
    bootstrap: str, topic: str, partitions: int, into: Outcomes, stop: asyncio.Event
) -> None:
    """Read the outcomes topic from its start (no consumer group) until `stop` is set."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
            for records in batches.values():
                for record in records:
                    into.add(record.timestamp, record.value)
    finally:
        await consumer.stop()


# ---- the variant -------------------------------------------------------------------------------


@dataclass
class AtlasRun:
    outcomes: Outcomes
    worker: Measured | None = None
    end_sample_cpu_s: float | None = None
    end_sample_hwm_kb: int | None = None
    balances_checked: int = 0
    balance_mismatches: list[str] = field(default_factory=list)
    extra_outcomes_after_grace: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    error: str | None = None
    profile_path: Path | None = None
    log_findings: dict[str, int] = field(default_factory=dict)
    batches: dict[str, float] = field(default_factory=dict)  # from the worker's /metrics
    changelog_records: dict[str, int] = field(default_factory=dict)  # written by this run


async def open_accounts(
    cfg: AtlasConfig,
    workload: Workload,
    registry: Registry,
    deadline: Deadline,
    timeout_s: float = 120.0,
) -> float:
    """Set-up step 1 (see the module docstring); the commands are on their topic already.
    Returns its duration in seconds."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        worker = await registry.spawn(
            "atlas-setup",
            cfg.argv(),
            env=cfg.env(),
            cwd=REPO_ROOT,
            log_path=cfg.log_dir / "atlas-setup.log",
        )
        try:
            await wait_http_ready("worker", f"{cfg.url}/health/ready", worker, deadline.bound(120))
            committed = await wait_commands_committed(cfg, worker, deadline.bound(timeout_s))
            if committed != len(workload.commands):
                raise RuntimeError(
                    f"{committed} commands on the topic, {len(workload.commands)} produced"
                )
            sample = setup_sample(workload.accounts)
            await wait_accounts_open(http, cfg, worker, sample, deadline.bound(60))
        finally:
            code = await worker.stop(grace_s=30)
    if code not in (0, None):
        raise RuntimeError(f"set-up worker exited with {code}; see {worker.log_path}")
    return time.monotonic() - started


async def measure(
    cfg: AtlasConfig,
    changelogs_before: dict[str, int],
    workload: Workload,
    registry: Registry,
    deadline: Deadline,
    *,
    timeout_s: float,
    profile_s: float = 0.0,
    profile_from: float = 0.0,
) -> AtlasRun:
    """Set-up step 3 (see the module docstring): run the worker over the produced payments."""
    run = AtlasRun(Outcomes())
    stop = asyncio.Event()
    collector = asyncio.create_task(
        collect_outcomes(
            cfg.bootstrap, cfg.topic_prefix + OUTCOMES, cfg.partitions, run.outcomes, stop
        )
    )
    http_timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=http_timeout) as http:
            worker = await registry.spawn(
                "atlas",
                cfg.argv(),
                env=cfg.env(),
                cwd=REPO_ROOT,
                log_path=cfg.log_dir / "atlas-worker.log",
            )
            run.worker = worker
            try:
                profiler = await _wait_outcomes(
                    run,
                    workload.total,
                    worker,
                    collector,
                    registry,
                    deadline,
                    timeout_s,
                    profile_s,
                    profile_from,
                    cfg,
                )
                end = worker.snapshot()
                if end is not None:
                    run.end_sample_cpu_s, run.end_sample_hwm_kb = end.cpu_s, end.hwm_kb
                if profiler is not None and profiler.returncode is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(profiler.wait(), timeout=profile_s + 10)
                # Anything beyond the expected count (re-emitted outcomes) shows up within this.
                await asyncio.sleep(2)
                run.extra_outcomes_after_grace = run.outcomes.count - workload.total
                answers = await get_accounts(http, cfg, workload.accounts)
                check_balances(run, workload, answers)
                run.batches = await batch_metrics(http, cfg)
            except (BenchTimeout, RuntimeError) as exc:
                run.timed_out = isinstance(exc, BenchTimeout)
                run.error = str(exc)
                end = worker.snapshot()
                if end is not None:
                    run.end_sample_cpu_s, run.end_sample_hwm_kb = end.cpu_s, end.hwm_kb
            finally:
                run.exit_code = await worker.stop(grace_s=30)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(collector, timeout=10)
    run.log_findings = scan_log(cfg.log_dir / "atlas-worker.log")
    with contextlib.suppress(Exception):
        after = await asyncio.wait_for(changelog_offsets(cfg), timeout=30)
        run.changelog_records = {
            t: n - changelogs_before.get(t, 0) for t, n in sorted(after.items())
        }
    return run


async def changelog_offsets(cfg: AtlasConfig) -> dict[str, int]:
    """Records in each of the app's changelog topics: the sum of its partitions' end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        names = [
            t
            for t in await consumer.topics()
            if t.startswith(cfg.app_name + "-") and t.endswith("-changelog")
        ]
        # Faust creates each table's changelog with the app's partition count.
        tps = [TopicPartition(t, p) for t in names for p in range(cfg.partitions)]
        ends = await consumer.end_offsets(tps) if tps else {}
        totals: Counter[str] = Counter()
        for tp, end in ends.items():
            totals[tp.topic.removeprefix(cfg.app_name + "-")] += end
        return dict(totals)
    finally:
        await consumer.stop()


async def batch_metrics(http: aiohttp.ClientSession, cfg: AtlasConfig) -> dict[str, float]:
    """The ledger agent's batch count, mean size and mean duration, from GET /metrics."""
    async with http.get(f"{cfg.url}/metrics") as r:
        text = await r.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if 'agent="ledger"' not in line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        if metric.endswith(("_sum", "_count")):
            found[metric] = float(value)
    size_n = found.get("atlas_agent_batch_size_count", 0.0)
    duration_n = found.get("atlas_agent_batch_duration_seconds_count", 0.0)
    return {
        "batches": size_n,
        "mean_batch_size": found.get("atlas_agent_batch_size_sum", 0.0) / size_n if size_n else 0,
        "mean_batch_ms": 1000
        * found.get("atlas_agent_batch_duration_seconds_sum", 0.0)
        / duration_n
        if duration_n
        else 0,
    }


async def _wait_outcomes(
    run: AtlasRun,
    expected: int,
    worker: Measured,
    collector: asyncio.Task[None],
    registry: Registry,
    deadline: Deadline,
    timeout_s: float,
    profile_s: float,
    profile_from: float,
    cfg: AtlasConfig,
) -> asyncio.subprocess.Process | None:
    """Until every payment has its outcome. With `profile_s`, py-spy starts once outcomes
    flow and `profile_from` (a fraction) of them are out."""
    limit = deadline.bound(timeout_s)
    started = time.monotonic()
    profiler: asyncio.subprocess.Process | None = None
    while run.outcomes.count < expected:
        if time.monotonic() - started > limit:
            raise BenchTimeout(f"{run.outcomes.count} of {expected} outcomes after {limit:.0f}s")
        if not worker.alive:
            raise RuntimeError(
                f"worker exited with {worker.proc.returncode} after {run.outcomes.count} "
                f"outcomes; see {worker.log_path}"
            )
        if collector.done():
            raise RuntimeError(f"the outcomes reader stopped: {collector.exception()!r}")
        if (
            profile_s > 0
            and profiler is None
            and run.outcomes.count > max(0, int(profile_from * expected))
        ):
            run.profile_path = cfg.log_dir / "atlas-worker.pyspy.txt"
            profiler = await registry.spawn_helper(
                [
                    PY_SPY,
                    "record",
                    "--pid",
                    str(worker.pid),
                    "--duration",
                    str(int(profile_s)),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--output",
                    str(run.profile_path),
                ],
                cfg.log_dir / "py-spy.log",
            )
        await asyncio.sleep(0.1)
    return profiler


def check_balances(run: AtlasRun, workload: Workload, answers: dict[str, tuple[int, Any]]) -> None:
    for account_id in workload.accounts:
        status, body = answers.get(account_id, (0, None))
        run.balances_checked += 1
        want = workload.expected[account_id]
        if status != 200 or not isinstance(body, dict):
            run.balance_mismatches.append(f"{account_id}: HTTP {status} {body!r}"[:200])
        elif body.get("balance") != want:
            run.balance_mismatches.append(
                f"{account_id}: balance {body.get('balance')} != expected {want}"
            )


def verdict(run: AtlasRun, workload: Workload) -> tuple[bool, str]:
    o = run.outcomes
    problems: list[str] = []
    if run.error:
        problems.append(run.error)
    if o.count != workload.total:
        problems.append(f"{o.count} outcomes for {workload.total} payments")
    applied, dup = o.by_status.get("applied", 0), o.by_status.get("duplicate", 0)
    if applied != workload.unique or len(o.applied_ids) != workload.unique:
        twice = sum(1 for n in o.applied_ids.values() if n > 1)
        problems.append(
            f"applied {applied} ({len(o.applied_ids)} ids, {twice} applied more than once), "
            f"expected {workload.unique}"
        )
    if o.duplicate_ids != workload.duplicate_ids or dup != workload.duplicates:
        problems.append(
            f"{dup} duplicate outcomes, {len(o.duplicate_ids ^ workload.duplicate_ids)} ids "
            f"differ from the {workload.duplicates} re-sent"
        )
    if o.rejections:
        problems.append(f"rejected: {dict(o.rejections.most_common(3))}")
    if run.balance_mismatches:
        problems.append(
            f"{len(run.balance_mismatches)}/{run.balances_checked} balances wrong, "
            f"e.g. {run.balance_mismatches[0]}"
        )
    summary = (
        f"{o.count} outcomes: {applied} applied, {dup} duplicate, "
        f"{o.by_status.get('rejected', 0)} rejected; "
        f"{run.balances_checked - len(run.balance_mismatches)}/{len(workload.accounts)} "
        "balances match"
    )
    if problems:
        return False, "; ".join(problems)
    return True, summary


def scan_log(path: Path) -> dict[str, int]:
    """Warnings and errors in the worker's log, by message with numbers masked."""
    found: Counter[str] = Counter()
    if not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            level = str(rec.get("level", "")).lower()
            if level in ("warning", "error", "critical", "exception"):
                event = _DIGITS.sub("N", str(rec.get("event", "")))[:160]
                found[f"{level}: {rec.get('logger', '')}: {event}"] += 1
        elif "Traceback" in line or "Error" in line:
            found[f"text: {_DIGITS.sub('N', line.strip())[:160]}"] += 1
    return dict(found.most_common(20))
