"""The HTTP benchmark's CPU accounting: what each group spent, and the rest of the machine."""

from __future__ import annotations

import os

import pytest

from tests.bench.http_report import Row, ratios, render_cpu_table
from tests.bench.machine_cpu import Snapshot, per_request_us, snapshot, spent


def test_spent_splits_the_machine_into_groups_and_the_rest() -> None:
    before = Snapshot(100.0, {1: ("server", 10.0), 2: ("postgres", 5.0), 3: ("kafka", 1.0)})
    after = Snapshot(
        112.0,
        {1: ("server", 15.0), 2: ("postgres", 7.0), 3: ("kafka", 2.0), 4: ("postgres", 0.5)},
    )
    cpu = spent(before, after)
    # pid 4 started during the run: all of its CPU counts
    assert cpu["server"] == pytest.approx(5.0)
    assert cpu["postgres"] == pytest.approx(2.5)
    assert cpu["kafka"] == pytest.approx(1.0)
    assert cpu["redis"] == 0.0
    assert cpu["machine"] == pytest.approx(12.0)
    assert cpu["other"] == pytest.approx(12.0 - 8.5)
    us = per_request_us(cpu, 1000)
    assert us["server"] == pytest.approx(5000.0)
    assert per_request_us(cpu, 0) == {}


def test_snapshot_finds_this_process_as_the_server() -> None:
    snap = snapshot(os.getpid())
    group, cpu = snap.by_pid[os.getpid()]
    assert group == "server" and cpu > 0
    assert snap.busy_s > 0


def _row(kind: str, rps: float, p99: float, **cpu: float) -> Row:
    return Row(kind, kind, 16, int(rps * 10), rps, 1.0, p99, 0, 0, 90.0, None, "", cpu, 180.0)


def test_both_atlas_variants_are_compared_with_each_peer() -> None:
    rows = [
        _row("bare", 4000, 10, server=150.0),
        _row("fastapi", 2000, 20),
        _row("atlas", 1000, 40),
        _row("atlas-write", 3000, 15),
    ]
    got = ratios(rows)
    assert got["c=16 atlas/bare req/s"] == pytest.approx(0.25)
    assert got["c=16 atlas-write/fastapi req/s"] == pytest.approx(1.5)
    assert got["c=16 atlas-write p99 / bare p99"] == pytest.approx(1.5)
    table = render_cpu_table(rows)
    assert "150" in table.splitlines()[2] and "180" in table.splitlines()[2]
