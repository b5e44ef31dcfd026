"""The payments benchmark's wide row: its options, its set-up checks and its printed lines."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from tests.bench.atlas_variant import COMMANDS, AtlasConfig, commands_lag, setup_sample
from tests.bench.bench_streams import Row, parse_args, ratios, wide_lines
from tests.bench.workload import account_ids


def test_the_wide_row_is_on_by_default_and_can_be_skipped() -> None:
    args = parse_args([])
    assert (args.wide_accounts, args.wide_events) == (100_000, 100_000)
    args = parse_args(["--wide-accounts", "0"])
    assert args.wide_accounts == 0
    args = parse_args(["--wide-accounts", "5000", "--wide-events", "2000"])
    assert (args.wide_accounts, args.wide_events) == (5000, 2000)


@pytest.mark.parametrize("argv", [["--wide-accounts", "-1"], ["--wide-events", "10"]])
def test_wide_options_out_of_range_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_the_set_up_reads_back_every_account_up_to_the_sample_size() -> None:
    few = account_ids(1000)
    assert setup_sample(few) == few
    many = account_ids(100_000)
    sample = setup_sample(many)
    assert len(sample) == len(set(sample)) == 1000
    assert sample[-1] == many[-1]  # the last one opened
    assert set(sample) <= set(many)
    assert setup_sample(many) == sample  # seeded


class _Admin:
    def __init__(self, committed: dict[TopicPartition, int]) -> None:
        self.committed = committed
        self.asked: list[tuple[str, list[TopicPartition]]] = []

    async def list_consumer_group_offsets(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, Any]:
        self.asked.append((group, partitions))
        return {tp: SimpleNamespace(offset=o) for tp, o in self.committed.items()}


async def test_commands_lag_counts_what_the_group_has_not_committed(tmp_path: Path) -> None:
    cfg = AtlasConfig("127.0.0.1:9092", "g", "p.", 3, tmp_path, tmp_path, 1)
    tps = [TopicPartition("p." + COMMANDS, p) for p in range(3)]
    ends = dict(zip(tps, (10, 20, 30), strict=True))
    # partition 0 done, 1 half way, 2 never committed (-1 or absent: from the beginning)
    admin = _Admin({tps[0]: 10, tps[1]: 5, tps[2]: -1})
    assert await commands_lag(admin, cfg, ends) == 15 + 30
    assert admin.asked == [("g", tps)]
    admin = _Admin({tps[0]: 10, tps[1]: 20})
    assert await commands_lag(admin, cfg, ends) == 30
    admin = _Admin(dict(ends))
    assert await commands_lag(admin, cfg, ends) == 0


def test_the_wide_block_prints_its_table_and_ratio_lines() -> None:
    rows = [
        Row("atlas (faust worker)", 110_000, 80.0, 1375.0, 90.0, 600.0, 400.0, True, "ok"),
        Row("quix", 110_000, 8.0, 13750.0, 10.0, 55.0, 300.0, True, "ok"),
    ]
    wide = {
        "workload": {
            "accounts": 100_000,
            "payments_total": 110_000,
            "unique_events": 100_000,
            "duplicates": 10_000,
        },
        "atlas_setup_s": 44.3,
        "rows": [asdict(r) for r in rows],
        "ratios": ratios(rows),
        "details": {"atlas": {"events_per_s_by_fifth": [1, 2, 3, 4, 5]}},
    }
    lines = wide_lines(wide)
    assert "atlas/quix events/s (100000 accounts): 0.100" in lines
    assert "atlas/quix CPU per event (100000 accounts): 10.909" in lines
    table = next(line for line in lines if "CPU µs/ev" in line)
    assert "peak RSS MB" in table
    assert any("600.0" in line and "400" in line for line in "\n".join(lines).splitlines())
    assert "\natlas events/s over each fifth of the run (100000 accounts): [1, 2, 3, 4, 5]" in lines
    assert not any(line.startswith(("atlas/raw", "atlas/faust")) for line in lines)
