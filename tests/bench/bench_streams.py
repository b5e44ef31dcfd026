"""Payments throughput: Atlas's worker against a raw aiokafka loop and a Quix Streams app.

    .venv/bin/python -m tests.bench.bench_streams [--events N] [--accounts M]
        [--duplicates 0.1] [--partitions P] [--variants atlas,raw,quix,faust]
        [--wide-accounts 100000] [--wide-events 100000] [--timeout 1500]

One run: a fresh topic namespace (`bench-<time>-<random>.`), the payments produced once
(`--events` unique deposits plus `--duplicates` of them re-sent later, keyed by account id),
then each variant in turn as its own subprocess, from its own new consumer group:

- atlas: `atlas worker` (the product's agents, RocksDB tables); see `atlas_variant.py`;
- raw: aiokafka `getmany` + orjson decode, nothing else; see `variant_raw.py`;
- quix: Quix Streams 3.28 with per-account state: dedup by event id, sum; see `variant_quix.py`;
- faust: the floor of a Faust agent: Atlas's batching, the dedup and sums in a plain dict, no
  table and no output (`variant_faust.py`); no pipeline of Faust agents can be faster.

Then a second, wide row on topics of its own (`<namespace>wide.`): `--wide-events` unique
deposits (the same `--duplicates` re-sent) over `--wide-accounts` accounts (100,000: nearly
every event touches an account no other event of its batch does, so Atlas writes about one
changelog record per event), atlas and quix only, side by side and judged as the first row
(every balance / every sum, every duplicate). Atlas's set-up opens those accounts the same way:
their OpenAccount commands produced straight to the commands topic, the set-up worker done when
its group has committed them all (see `atlas_variant.py`). Quix needs no set-up: its state per
account (key) starts empty, as in the first row. `--wide-accounts 0` skips the row.

Per variant: events/s from the first to the last event handled, CPU seconds of the process
tree (whole process, start-up included) and CPU µs per event inside that window, peak RSS
(VmHWM), and whether the result is right. The tables are printed and written as JSON to
`.local/bench/streams-<time>.json` (the wide row under `"wide"`). The run is bounded by
`--timeout`; its processes, state folders and topics are removed at the end (`--keep` keeps
the topics and folders).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import orjson

from tests.bench import atlas_variant
from tests.bench.atlas_variant import COMMANDS, OUTCOMES, PAYMENTS, AtlasConfig
from tests.bench.procs import BenchTimeout, Deadline, Measured, Registry, run_bounded
from tests.bench.profile_summary import render, summarise
from tests.bench.variant_common import VariantResult
from tests.bench.workload import Workload, build, create_topics, produce
from tests.topics import delete_topics_containing

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = REPO_ROOT / ".local" / "bench"
VARIANTS = ("atlas", "raw", "quix", "faust")
WIDE_VARIANTS = ("atlas", "quix")  # the second, wide row: side by side, no floors
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
NOTES = (
    "seconds: atlas = broker timestamps of its first and last outcome record; raw = partitions "
    "assigned to last message decoded; quix = first to last message handled; faust = first to "
    "last batch handled. CPU s = the whole "
    "process tree until done (start-up included); CPU µs/ev = CPU inside that window per event."
)


@dataclass
class Row:
    variant: str
    events: int
    seconds: float | None  # first to last event handled
    events_per_s: float | None
    cpu_s: float | None  # the whole process tree until the variant was done, start-up included
    cpu_us_per_event: float | None  # CPU inside the first-to-last window, per event
    peak_rss_mb: float | None
    correct: bool
    detail: str


def _rate(events: int, seconds: float | None) -> float | None:
    return events / seconds if seconds else None


def _window_cpu_us(
    m: Measured, first: float | None, last: float | None, events: int
) -> float | None:
    if first is None or last is None or events == 0:
        return None
    a, b = m.cpu_at(first), m.cpu_at(last)
    return None if a is None or b is None else (b - a) * 1e6 / events


# ---- variants ----------------------------------------------------------------------------------


async def run_atlas(
    cfg: AtlasConfig,
    changelogs_before: dict[str, int],
    workload: Workload,
    registry: Registry,
    deadline: Deadline,
    timeout_s: float,
    profile_s: float,
    profile_from: float,
) -> tuple[Row, dict[str, Any]]:
    run = await atlas_variant.measure(
        cfg,
        changelogs_before,
        workload,
        registry,
        deadline,
        timeout_s=timeout_s,
        profile_s=profile_s,
        profile_from=profile_from,
    )
    o = run.outcomes
    seconds = None
    first = last = None
    if o.first_ts_ms is not None and o.last_ts_ms is not None:
        first, last = o.first_ts_ms / 1000, o.last_ts_ms / 1000
        seconds = last - first
    ok, detail = atlas_variant.verdict(run, workload)
    worker = run.worker
    row = Row(
        variant="atlas (faust worker)"
        + (" [profiled]" if profile_s else "")
        + "".join(f" [{k}={v}]" for k, v in cfg.overrides)
        + (" [no set-up]" if not changelogs_before else ""),
        events=o.count,
        seconds=seconds,
        events_per_s=_rate(o.count, seconds),
        cpu_s=run.end_sample_cpu_s,
        cpu_us_per_event=_window_cpu_us(worker, first, last, o.count) if worker else None,
        peak_rss_mb=run.end_sample_hwm_kb / 1024 if run.end_sample_hwm_kb else None,
        correct=ok,
        detail=detail,
    )
    extra: dict[str, Any] = {
        "outcomes_by_status": dict(o.by_status),
        "events_per_s_by_fifth": o.rate_by_fifth(),
        "rejections": dict(o.rejections),
        "outcomes_beyond_expected_after_2s": run.extra_outcomes_after_grace,
        "first_outcome_after_start_s": (
            o.first_seen_wall - worker.samples[0].wall
            if worker and worker.samples and o.first_seen_wall
            else None
        ),
        "worker_exit_code": run.exit_code,
        "overrides": dict(cfg.overrides),
        "ledger_batches": run.batches,
        "changelog_records": run.changelog_records,
        "changelog_records_per_payment": (
            round(sum(run.changelog_records.values()) / o.count, 3) if o.count else None
        ),
        "worker_log": str(cfg.log_dir / "atlas-worker.log"),
        "worker_log_warnings_and_errors": run.log_findings,
        "balance_mismatches_sample": run.balance_mismatches[:10],
    }
    if run.profile_path is not None and run.profile_path.exists():
        extra["profile"] = str(run.profile_path)
        extra["profile_summary"] = render(summarise(run.profile_path, top=25))
    return row, extra


async def run_subprocess_variant(
    name: str,
    module: str,
    *,
    bootstrap: str,
    topic: str,
    group: str,
    workload: Workload,
    run_dir: Path,
    registry: Registry,
    deadline: Deadline,
    timeout_s: float,
    extra_argv: list[str],
    python: str = sys.executable,
) -> tuple[Row, VariantResult, Measured]:
    limit = deadline.bound(timeout_s)
    result_path = run_dir / f"{name}.result.json"
    argv = [
        python,
        "-m",
        module,
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--expected",
        str(workload.total),
        "--result",
        str(result_path),
        "--timeout-s",
        str(limit),
        *extra_argv,
    ]
    proc = await registry.spawn(
        name,
        argv,
        env=dict(os.environ),
        cwd=REPO_ROOT,
        log_path=run_dir / f"{name}.log",
        stdin_pipe=True,
    )
    started = time.monotonic()
    while not result_path.exists():
        if not proc.alive:
            break
        if time.monotonic() - started > limit + 30:
            break
        await asyncio.sleep(0.1)
    end = proc.snapshot()
    code = await proc.stop(grace_s=30)
    if result_path.exists():
        result = VariantResult(**orjson.loads(result_path.read_bytes()))
    else:
        result = VariantResult(error=f"no result (exit code {code}); see {proc.log_path}")
    start = result.assigned_wall or result.first_wall  # see each variant's docstring
    seconds = (
        result.last_wall - start if start is not None and result.last_wall is not None else None
    )
    row = Row(
        variant=name,
        events=result.handled,
        seconds=seconds,
        events_per_s=_rate(result.handled, seconds),
        cpu_s=end.cpu_s if end else None,
        cpu_us_per_event=_window_cpu_us(proc, start, result.last_wall, result.handled),
        peak_rss_mb=end.hwm_kb / 1024 if end else None,
        correct=False,
        detail="",
    )
    return row, result, proc


def judge_raw(row: Row, result: VariantResult, workload: Workload) -> None:
    problems = _common_problems(result, workload)
    if result.decode_errors:
        problems.append(f"{result.decode_errors} decode errors")
    row.correct = not problems
    row.detail = "; ".join(problems) or f"decoded {result.handled} of {workload.total}"


def judge_dedup(row: Row, result: VariantResult, workload: Workload) -> None:
    problems = _common_problems(result, workload)
    wrong = [a for a in workload.accounts if result.sums.get(a, 0) != workload.expected[a]]
    if wrong:
        a = wrong[0]
        problems.append(
            f"{len(wrong)}/{len(workload.accounts)} sums wrong, e.g. {a}: "
            f"{result.sums.get(a)} != {workload.expected[a]}"
        )
    if result.duplicates != workload.duplicates:
        problems.append(f"{result.duplicates} duplicates dropped, {workload.duplicates} re-sent")
    row.correct = not problems
    row.detail = "; ".join(problems) or (
        f"{len(workload.accounts)}/{len(workload.accounts)} sums match, "
        f"{result.duplicates} duplicates dropped"
    )


def _common_problems(result: VariantResult, workload: Workload) -> list[str]:
    problems = []
    if result.error:
        problems.append(result.error)
    if result.timed_out:
        problems.append("timed out")
    if result.handled != workload.total:
        problems.append(f"handled {result.handled} of {workload.total}")
    return problems


# ---- report ------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(rows: list[Row]) -> str:
    header = ["variant", "events", "seconds", "events/s", "CPU s", "CPU µs/ev", "peak RSS MB"]
    body = [
        [
            r.variant,
            str(r.events),
            _fmt(r.seconds, ".2f"),
            _fmt(r.events_per_s, ",.0f"),
            _fmt(r.cpu_s, ".1f"),
            _fmt(r.cpu_us_per_event, ".1f"),
            _fmt(r.peak_rss_mb, ".0f"),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " | correct"]
    lines.append("-+-".join("-" * w for w in widths) + "-+--------")
    for r, cells in zip(rows, body, strict=True):
        text = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        lines.append(" | ".join(text) + f" | {'yes' if r.correct else 'NO'}: {r.detail}")
    return "\n".join(lines)


def ratios(rows: list[Row]) -> dict[str, float | None]:
    by = {r.variant.split(" ")[0]: r for r in rows}
    out: dict[str, float | None] = {}
    atlas = by.get("atlas")
    for other in ("quix", "raw", "faust"):
        o = by.get(other)
        if atlas is None or o is None:
            continue
        out[f"atlas/{other} events/s"] = (
            atlas.events_per_s / o.events_per_s if atlas.events_per_s and o.events_per_s else None
        )
        out[f"atlas/{other} CPU per event"] = (
            atlas.cpu_us_per_event / o.cpu_us_per_event
            if atlas.cpu_us_per_event and o.cpu_us_per_event
            else None
        )
    return out


def _versions(quix_python: str) -> dict[str, str]:
    found = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    for dist in ("faust-streaming", "aiokafka", "rocksdict"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "absent"
    # Quix Streams and its confluent-kafka live in the interpreter the quix variant runs on.
    asked = subprocess.run(
        [quix_python, "-c", _PEER_VERSIONS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for line in asked.stdout.splitlines():
        dist, _, found_version = line.partition(" ")
        found[dist] = found_version
    return found


_PEER_VERSIONS = """
from importlib.metadata import version
for dist in ("quixstreams", "confluent-kafka"):
    try:
        print(dist, version(dist))
    except Exception:
        print(dist, "absent")
"""


# ---- the run -----------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, registry: Registry, deadline: Deadline) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"bench-{stamp}-{secrets.token_hex(2)}"
    prefix = f"{run_id}."
    run_dir = OUT_DIR / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "run_id": run_id,
        "started_at": stamp,
        "args": vars(args),
        "versions": _versions(args.quix_python),
        "run_dir": str(run_dir),
        "notes": NOTES,
    }
    print(f"run {run_id}: topics {prefix}*, logs in {run_dir}", flush=True)
    try:
        await _bench(args, registry, deadline, run_id, prefix, run_dir, report)
    except Exception as exc:  # reported with whatever rows were measured before it
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(f"run failed: {report['error']}", file=sys.stderr, flush=True)
    finally:
        rows = [Row(**r) for r in report.get("rows", [])]
        report["ratios"] = ratios(rows)
        if "wide" in report:
            wide = report["wide"]
            wide["ratios"] = ratios([Row(**r) for r in wide.get("rows", [])])
        await registry.stop_all()
        if not args.keep:
            try:
                deleted = await asyncio.wait_for(
                    delete_topics_containing(args.bootstrap, run_id), timeout=30
                )
                report["topics_deleted"] = deleted
            except Exception as exc:
                report["topics_deleted"] = f"failed: {exc!r}"
            for state in ("atlas-data", "quix-state", "faust-state"):
                shutil.rmtree(run_dir / state, ignore_errors=True)
                shutil.rmtree(run_dir / "wide" / state, ignore_errors=True)
    return report


async def _bench(
    args: argparse.Namespace,
    registry: Registry,
    deadline: Deadline,
    run_id: str,
    prefix: str,
    run_dir: Path,
    report: dict[str, Any],
) -> None:
    api_key = ""
    if "atlas" in args.variants:
        probe = _atlas_config(args, run_id, prefix, run_dir, "atlas")
        api_key = (await atlas_variant.with_api_client(probe)).api_key
    workload = build(args.events, args.accounts, args.duplicates, seed=args.seed)
    await _run_workload(
        args,
        registry,
        deadline,
        workload,
        variants=args.variants,
        group_prefix=run_id,
        prefix=prefix,
        run_dir=run_dir,
        api_key=api_key,
        profile_s=args.profile_atlas,
        section=report,
    )
    wide_variants = [v for v in args.variants if v in WIDE_VARIANTS]
    if args.wide_accounts and wide_variants:
        del workload  # its payments are produced and measured
        wide = build(args.wide_events, args.wide_accounts, args.duplicates, seed=args.seed)
        wide_dir = run_dir / "wide"
        wide_dir.mkdir(exist_ok=True)
        print(f"\nwide row: {args.wide_accounts} accounts, {args.wide_events} events", flush=True)
        await _run_workload(
            args,
            registry,
            deadline,
            wide,
            variants=wide_variants,
            group_prefix=f"{run_id}-wide",
            prefix=f"{run_id}.wide.",
            run_dir=wide_dir,
            api_key=api_key,
            profile_s=0.0,
            section=report.setdefault("wide", {}),
        )


def _atlas_config(
    args: argparse.Namespace, group_prefix: str, prefix: str, run_dir: Path, name: str
) -> AtlasConfig:
    return AtlasConfig(
        bootstrap=args.bootstrap,
        app_name=f"{group_prefix}-{name}",
        topic_prefix=prefix,
        partitions=args.partitions,
        data_dir=run_dir / "atlas-data",
        log_dir=run_dir,
        port=atlas_variant.free_port(),
        overrides=tuple(args.atlas_env),
    )


async def _run_workload(
    args: argparse.Namespace,
    registry: Registry,
    deadline: Deadline,
    workload: Workload,
    *,
    variants: list[str],
    group_prefix: str,  # consumer groups (and Atlas's changelogs) are named after it
    prefix: str,  # the topic namespace
    run_dir: Path,  # logs, results and state folders
    api_key: str,
    profile_s: float,
    section: dict[str, Any],  # what is measured goes here
) -> None:
    """One workload on topics of its own: the accounts opened (Atlas), the payments produced,
    then each of `variants` in turn."""
    section["workload"] = {
        "accounts": len(workload.accounts),
        "unique_events": workload.unique,
        "duplicates": workload.duplicates,
        "payments_total": workload.total,
        "min_gap_events": workload.min_gap,
        "partitions": args.partitions,
        "mean_value_bytes": sum(len(v) for _, v in workload.payments) / workload.total,
        "variants": list(variants),
    }
    await create_topics(
        args.bootstrap, [prefix + t for t in (PAYMENTS, COMMANDS, OUTCOMES)], args.partitions
    )
    cmd = await produce(
        args.bootstrap, prefix + COMMANDS, workload.commands, timeout_s=deadline.bound(120)
    )
    print(f"produced {cmd.records} OpenAccount commands", flush=True)

    cfg = replace(_atlas_config(args, group_prefix, prefix, run_dir, "atlas"), api_key=api_key)
    changelogs_before: dict[str, int] = {}
    if "atlas" in variants and not args.atlas_no_setup:
        setup_s = await atlas_variant.open_accounts(
            cfg, workload, registry, deadline, timeout_s=args.variant_timeout
        )
        section["atlas_setup_s"] = round(setup_s, 1)
        changelogs_before = await atlas_variant.changelog_offsets(cfg)
        print(f"atlas set-up: {len(workload.accounts)} accounts open ({setup_s:.0f}s)", flush=True)

    pay = await produce(
        args.bootstrap, prefix + PAYMENTS, workload.payments, timeout_s=deadline.bound(300)
    )
    section["produce"] = {
        "records": pay.records,
        "seconds": round(pay.seconds, 2),
        "per_s": round(pay.rate),
        "per_partition": dict(sorted(pay.per_partition.items())),
    }
    print(
        f"produced {pay.records} payments ({workload.unique} unique + {workload.duplicates} "
        f"re-sent) in {pay.seconds:.1f}s ({pay.rate:,.0f}/s) over {args.partitions} partitions",
        flush=True,
    )

    section["rows"] = []
    details: dict[str, Any] = section.setdefault("details", {})
    for variant in variants:
        print(f"running {variant} ...", flush=True)
        try:
            if variant == "atlas":
                row, extra = await run_atlas(
                    cfg,
                    changelogs_before,
                    workload,
                    registry,
                    deadline,
                    args.variant_timeout,
                    profile_s,
                    args.profile_from,
                )
                details["atlas"] = extra
            else:
                module = f"tests.bench.variant_{variant}"
                extra_argv = (
                    ["--state-dir", str(run_dir / f"{variant}-state")]
                    if variant in ("quix", "faust")
                    else []
                )
                row, result, _ = await run_subprocess_variant(
                    variant,
                    module,
                    bootstrap=args.bootstrap,
                    topic=prefix + PAYMENTS,
                    group=f"{group_prefix}-{variant}",
                    workload=workload,
                    run_dir=run_dir,
                    registry=registry,
                    deadline=deadline,
                    timeout_s=args.variant_timeout,
                    extra_argv=extra_argv,
                    python=args.quix_python if variant == "quix" else sys.executable,
                )
                (judge_raw if variant == "raw" else judge_dedup)(row, result, workload)
        except BenchTimeout as exc:
            row = Row(variant, 0, None, None, None, None, None, False, f"not run: {exc}")
        section["rows"].append(asdict(row))
        print(
            f"  {row.variant}: {row.events} events, {_fmt(row.events_per_s, ',.0f')}/s, "
            f"{'correct' if row.correct else 'NOT correct'}",
            flush=True,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=200_000, help="unique payment events")
    p.add_argument("--accounts", type=int, default=1_000)
    p.add_argument("--duplicates", type=float, default=0.1, help="fraction re-sent later")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument(
        "--wide-accounts",
        type=int,
        default=100_000,
        help="accounts of the second (wide) row, atlas and quix only; 0 skips that row",
    )
    p.add_argument(
        "--wide-events",
        type=int,
        default=100_000,
        help="unique payment events of the wide row (plus --duplicates of them re-sent)",
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma separated, in order")
    p.add_argument("--timeout", type=float, default=1500.0, help="hard bound of the whole run, s")
    p.add_argument("--variant-timeout", type=float, default=420.0, help="bound per variant, s")
    p.add_argument(
        "--profile-atlas",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="py-spy the worker for this long once payments flow (slows it: row is marked)",
    )
    p.add_argument(
        "--profile-from",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="start the profile once this fraction of the outcomes is out (default 0)",
    )
    p.add_argument(
        "--atlas-env",
        action="append",
        default=[],
        metavar="ATLAS_X=VALUE",
        help="diagnostic: an extra setting for the worker (repeatable; the row is marked)",
    )
    p.add_argument(
        "--atlas-no-setup",
        action="store_true",
        help="diagnostic: skip opening the accounts first; the worker meets the OpenAccount "
        "commands and the payments in one backlog",
    )
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="a loopback broker only")
    p.add_argument(
        "--quix-python",
        default=sys.executable,
        help="the interpreter of Quix Streams' own virtualenv (make bench-streams builds one)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep", action="store_true", help="keep the run's topics and state folders")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    if not all(s.strip().rsplit(":", 1)[0] in LOOPBACK for s in args.bootstrap.split(",")):
        p.error("--bootstrap must be a loopback address (127.0.0.1, localhost, [::1])")
    overrides = []
    for item in args.atlas_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("ATLAS_"):
            p.error(f"--atlas-env wants ATLAS_NAME=VALUE, not {item!r}")
        overrides.append((key, value))
    args.atlas_env = overrides
    if not 0 <= args.duplicates < 1:
        p.error("--duplicates is a fraction in [0, 1)")
    if args.wide_accounts < 0 or (args.wide_accounts and args.wide_events < 100):
        p.error("--wide-accounts is 0 (no wide row) or more, with --wide-events of 100 or more")
    return args


def atlas_lines(atlas: dict[str, Any], label: str = "") -> list[str]:
    """What the report says about the Atlas worker beyond its row (`label` names the row)."""
    lines: list[str] = []
    if atlas.get("worker_log_warnings_and_errors"):
        lines.append(f"\natlas worker log{label}, warnings and errors (count: message):")
        for message, count in atlas["worker_log_warnings_and_errors"].items():
            lines.append(f"  {count}: {message}")
    if atlas.get("events_per_s_by_fifth"):
        lines.append(
            f"\natlas events/s over each fifth of the run{label}: {atlas['events_per_s_by_fifth']}"
        )
    if atlas.get("ledger_batches") or atlas.get("changelog_records"):
        lines.append(
            f"\natlas ledger batches{label}: {atlas.get('ledger_batches')}; changelog records "
            f"written: {atlas.get('changelog_records')} "
            f"({atlas.get('changelog_records_per_payment')} per payment)"
        )
    return lines


def wide_lines(wide: dict[str, Any]) -> list[str]:
    """The wide row's block: its workload, its table, its ratios on lines of their own."""
    w = wide.get("workload", {})
    accounts = w.get("accounts")
    label = f" ({accounts} accounts)"
    setup = wide.get("atlas_setup_s")
    lines = [
        f"\nwide row: {accounts} accounts, {w.get('payments_total')} payments "
        f"({w.get('unique_events')} unique + {w.get('duplicates')} re-sent)"
        + (f", atlas set-up {setup:.0f}s (not measured)" if setup is not None else ""),
        render_table([Row(**r) for r in wide.get("rows", [])]),
    ]
    for name, value in wide.get("ratios", {}).items():
        lines.append(f"{name}{label}: {_fmt(value, '.3f')}")
    lines.extend(atlas_lines(wide.get("details", {}).get("atlas", {}), label))
    return lines


def main() -> int:
    args = parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    report = run_bounded(args.timeout, lambda registry, deadline: bench(args, registry, deadline))
    if report is None:
        return 130

    rows = [Row(**r) for r in report.get("rows", [])]
    print()
    print(render_table(rows))
    print(NOTES)
    for name, value in report.get("ratios", {}).items():
        print(f"{name}: {_fmt(value, '.3f')}")
    atlas = report.get("details", {}).get("atlas", {})
    for line in atlas_lines(atlas):
        print(line)
    if atlas.get("profile_summary"):
        print(f"\natlas worker profile ({atlas['profile']}):\n{atlas['profile_summary']}")
    wide = report.get("wide")
    if wide:
        rows += [Row(**r) for r in wide.get("rows", [])]
        for line in wide_lines(wide):
            print(line)
    if report.get("error"):
        print(f"\nrun failed: {report['error']}")
    out = OUT_DIR / f"streams-{report['started_at']}.json"
    out.write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
    )
    print(f"\nwritten {out.relative_to(REPO_ROOT)}")
    expected_rows = len(args.variants) + (
        len([v for v in args.variants if v in WIDE_VARIANTS]) if args.wide_accounts else 0
    )
    return 0 if len(rows) == expected_rows and all(r.correct for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
