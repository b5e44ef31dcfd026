"""Consumer lag's pure parts: message lag, time lag, Burrow's rules, the tracker, the checks."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from streams.lag import (
    Commit,
    LagMonitor,
    LagReport,
    LagTracker,
    Offsets,
    PartitionLag,
    Status,
    message_lag,
    partition_status,
    time_lag,
    worst,
)
from streams.settings import Settings
from web.checks import dependency_checks


def test_message_lag_counts_from_the_beginning_without_a_commit() -> None:
    assert message_lag(40, 100, 0) == 60
    assert message_lag(None, 100, 30) == 70
    assert message_lag(-1, 100, 30) == 70
    assert message_lag(100, 100, 0) == 0
    assert message_lag(120, 100, 0) == 0  # never negative


def test_time_lag_interpolates_between_end_offset_samples() -> None:
    ends = [(0.0, 0), (10.0, 100), (20.0, 300)]
    # The end offset passed 200 halfway between t=10 and t=20.
    assert time_lag(200, ends, now=30.0) == pytest.approx(15.0)
    assert time_lag(100, ends, now=30.0) == pytest.approx(20.0)
    assert time_lag(50, ends, now=30.0) == pytest.approx(25.0)


def test_time_lag_is_zero_when_caught_up_even_after_a_long_idle() -> None:
    ends = [(0.0, 500), (1000.0, 500), (5000.0, 500)]
    assert time_lag(500, ends, now=9000.0) == 0.0
    assert time_lag(600, ends, now=9000.0) == 0.0
    assert time_lag(0, [], now=10.0) == 0.0


def test_time_lag_is_capped_at_the_history_span_and_never_negative_or_nan() -> None:
    ends = [(100.0, 50), (110.0, 60)]
    assert time_lag(10, ends, now=120.0) == pytest.approx(20.0)  # older than the history
    value = time_lag(55, ends, now=90.0)  # a clock before the samples
    assert value == 0.0 and not math.isnan(value)
    flat = [(0.0, 10), (5.0, 10), (9.0, 20)]
    assert time_lag(10, flat, now=9.0) == pytest.approx(4.0)


def commits(*rows: tuple[float, int, int]) -> list[Commit]:
    return [Commit(at, offset, lag) for at, offset, lag in rows]


def test_ok_when_the_current_lag_is_zero() -> None:
    stopped = commits((0, 10, 5), (10, 10, 5))
    assert partition_status(stopped, [20], lag=0, now=1000) is Status.OK


def test_ok_when_the_lag_was_zero_somewhere_in_the_window() -> None:
    window = commits((0, 10, 0), (10, 20, 5), (20, 30, 8))
    assert partition_status(window, [38], lag=8, now=25) is Status.OK


def test_ok_when_the_lag_decreases() -> None:
    window = commits((0, 10, 9), (10, 30, 12), (20, 60, 4))
    assert partition_status(window, [64], lag=4, now=25) is Status.OK


def test_warn_when_offsets_advance_but_the_lag_never_decreases() -> None:
    window = commits((0, 10, 5), (10, 20, 5), (20, 30, 9))
    assert partition_status(window, [39], lag=9, now=25) is Status.WARN


def test_stall_when_every_commit_has_the_same_offset() -> None:
    window = commits((0, 10, 5), (10, 10, 7), (20, 10, 9))
    assert partition_status(window, [19], lag=9, now=25) is Status.STALL


def test_rewind_when_an_offset_goes_backwards() -> None:
    window = commits((0, 50, 5), (10, 20, 40), (20, 30, 35))
    assert partition_status(window, [65], lag=35, now=25) is Status.REWIND


def test_stop_when_commits_stopped_for_longer_than_the_window_spans() -> None:
    window = commits((0, 10, 5), (10, 20, 5))
    assert partition_status(window, [25, 30], lag=10, now=21) is Status.STOP
    assert partition_status(window, [25, 30], lag=10, now=19) is not Status.STOP


def test_stop_waits_while_a_recent_end_offset_had_the_consumer_caught_up() -> None:
    window = commits((0, 10, 5), (10, 20, 5))
    assert partition_status(window, [20, 30], lag=10, now=100) is not Status.STOP


def test_stop_is_checked_before_the_zero_lag_rule() -> None:
    window = commits((0, 10, 0), (10, 20, 0))
    assert partition_status(window, [25], lag=5, now=100) is Status.STOP


def test_one_commit_is_not_enough_to_call_a_stall() -> None:
    assert partition_status(commits((10, 10, 5)), [15], lag=5, now=10) is Status.OK
    assert partition_status([], [15], lag=5, now=10) is Status.OK


def test_group_status_is_the_worst_in_burrows_order() -> None:
    assert worst([]) is Status.OK
    assert worst([Status.OK, Status.WARN]) is Status.WARN
    assert worst([Status.STOP, Status.WARN, Status.STALL]) is Status.STALL
    assert worst([Status.REWIND, Status.STALL]) is Status.REWIND


def reading(committed: int | None, end: int, live: bool = True) -> Offsets:
    key = ("t.payments", 0)
    return Offsets("g", live, {key: committed}, {key: end}, {key: 0})


def test_tracker_reports_lag_time_lag_and_status_over_its_history() -> None:
    tracker = LagTracker()
    first = tracker.observe(reading(0, 100), now=0.0)
    assert (first.partitions[0].lag, first.status) == (100, Status.OK)
    tracker.observe(reading(0, 200), now=10.0)
    report = tracker.observe(reading(0, 300), now=20.0)
    p = report.partitions[0]
    assert (p.committed, p.end, p.lag) == (0, 300, 300)
    assert p.lag_seconds == pytest.approx(20.0)  # capped at the history span
    assert report.status is Status.STALL  # live group, offset unchanged
    done = tracker.observe(reading(300, 300), now=30.0)
    assert (done.partitions[0].lag, done.partitions[0].lag_seconds, done.status) == (
        0,
        0.0,
        Status.OK,
    )


def test_tracker_sees_a_group_without_members_stop() -> None:
    tracker = LagTracker()
    tracker.observe(reading(50, 100, live=False), now=0.0)
    report = tracker.observe(reading(50, 120, live=False), now=5.0)
    assert report.status is Status.STOP


def test_tracker_counts_an_uncommitted_partition_from_its_beginning() -> None:
    report = LagTracker().observe(reading(-1, 40), now=0.0)
    assert (report.partitions[0].committed, report.partitions[0].lag) == (None, 40)
    assert report.as_json()["partitions"][0]["committed"] is None


class _Monitor:
    def __init__(self, report: LagReport | None) -> None:
        self.report = report


def lag_report(*statuses: Status) -> LagReport:
    parts = [PartitionLag("t", i, 0, 5, 5, 1.0, s) for i, s in enumerate(statuses)]
    return LagReport("g", worst(statuses), parts)


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((Status.OK,), "pass"),
        ((Status.OK, Status.WARN), "warn"),
        ((Status.STALL,), "warn"),
        ((Status.STOP, Status.STALL), "fail"),
        ((Status.REWIND,), "pass"),
    ],
)
async def test_health_check_warns_on_warn_or_stall_and_fails_on_stop(
    statuses: tuple[Status, ...], expected: str
) -> None:
    monitor: Any = _Monitor(lag_report(*statuses))
    resources: Any = SimpleNamespace(breakers=None)
    checks = dependency_checks(resources, Settings(_env_file=None), lambda: True, lag=monitor)
    mine = [c for c in checks if c.key == "kafka:consumerLag"]
    results = [await c.run() for c in mine]
    rank = {"pass": 0, "warn": 1, "fail": 2}
    assert max((r.status for r in results), key=rank.__getitem__) == expected


def test_the_monitor_watches_its_own_group_on_the_source_topics() -> None:
    monitor = LagMonitor(Settings(_env_file=None, app_name="a1", topic_prefix="p."))
    assert monitor.group == "a1"
    assert monitor.topics == [
        "p.atlas.payments.v1",
        "p.atlas.ledger.commands.v1",
        "p.atlas.ledger.legs.v1",
        "p.atlas.ledger.transfer-events.v1",
    ]


async def test_a_reader_that_cannot_start_closes_both_its_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.lag import OffsetsReader

    closed: list[str] = []

    async def refused(self: Any) -> None:
        raise ConnectionError("broker down")

    async def admin_started(self: Any) -> None:
        return None

    real_stop, real_close = AIOKafkaConsumer.stop, AIOKafkaAdminClient.close

    async def consumer_stopped(self: Any) -> None:
        closed.append("consumer")
        await real_stop(self)

    async def admin_closed(self: Any) -> None:
        closed.append("admin")
        await real_close(self)

    monkeypatch.setattr(AIOKafkaAdminClient, "start", admin_started)
    monkeypatch.setattr(AIOKafkaConsumer, "start", refused)
    monkeypatch.setattr(AIOKafkaConsumer, "stop", consumer_stopped)
    monkeypatch.setattr(AIOKafkaAdminClient, "close", admin_closed)
    with pytest.raises(ConnectionError):
        await OffsetsReader("127.0.0.1:1", timeout_s=1).start()
    assert sorted(closed) == ["admin", "consumer"]
