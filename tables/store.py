"""The changelog-backed tables. Keys are raw bytes (the message key); values are JSON objects.

- accounts: account id -> account record (balance, status, dedup marks, this hour's activity):
  the source of truth.
- archive: "<account id>/<seq>" -> a segment of archived dedup marks (the long-horizon dedup
  store, expired after `Limits.archive_horizon_s`).
- transfers: transfer id -> status and reason.

Every table is partitioned like the topic that writes it, so a key's state lives with the
partition its messages arrive on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

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


def define_tables(app: faust.App, partitions: int) -> LedgerTables:
    def table(name: str, **options: Any) -> Any:
        return app.Table(
            name,
            key_type=bytes,  # raw keys: the changelog key is the message key, byte for byte
            partitions=partitions,
            options=ROCKSDB_OPTIONS,
            **options,
        )

    return LedgerTables(
        accounts=table("accounts"),
        archive=table("archive"),
        transfers=table("transfers"),
    )
