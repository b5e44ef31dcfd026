"""The changelog-backed tables. Keys are raw bytes (the message key); values are JSON objects.

- accounts: account id -> account record (balance, status, dedup marks): the source of truth.
- archive: "<account id>/<seq>" -> a segment of archived dedup marks (the long-horizon dedup
  store, expired after `Limits.archive_horizon_s`).
- transfers: transfer id -> status and reason.
- activity: account id -> {count, volume} of applied payments, in tumbling one-hour windows.

Every table is partitioned like the topic that writes it, so a key's state lives with the
partition its messages arrive on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import faust

ACTIVITY_WINDOW_S = 3600

# RocksDB sizes per partition database (Faust's defaults are 64 MiB write buffers, three of
# them, and a 2 GiB block cache, for each of tables x partitions databases: hundreds of MB of
# resident memory on a small worker). Ignored by the memory store.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 4 * 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * 1024**2,
}


@dataclass(frozen=True)
class LedgerTables:
    accounts: Any
    archive: Any
    transfers: Any
    activity: Any


def define_tables(app: faust.App, partitions: int) -> LedgerTables:
    def table(name: str, **options: Any) -> Any:
        return app.Table(
            name,
            key_type=bytes,  # raw keys: the changelog key is the message key, byte for byte
            partitions=partitions,
            options=ROCKSDB_OPTIONS,
            **options,
        )

    activity = app.Table(
        "activity",
        default=lambda: {"count": 0, "volume": 0},
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        partitions=partitions,
        options=ROCKSDB_OPTIONS,
    ).tumbling(ACTIVITY_WINDOW_S, expires=timedelta(hours=25))
    return LedgerTables(
        accounts=table("accounts"),
        archive=table("archive"),
        transfers=table("transfers"),
        activity=activity.relative_to_stream(),
    )
