"""The changelog-backed tables. Keys are raw bytes (the message key); values are JSON objects.

- accounts: account id -> account record (balance, status, dedup marks, this hour's activity):
  the source of truth.
- archive: "<account id>/<seq>" -> a segment of archived dedup marks (the long-horizon dedup
  store, expired after `Limits.archive_horizon_s`).
- transfers: transfer id -> status and reason.

Every table is partitioned like the topic that writes it, so a key's state lives with the
partition its messages arrive on.

A worker's local store (RocksDB) is a cache of the changelog that Faust catches up from the
offset it last persisted. That is only sound while this worker held the partition without a
break: a worker that the group coordinator expired (a broker restart, a long pause) may have
gone on writing the changelog beside the partition's new owner, and its persisted offset then
runs past records it never applied. `LedgerTable` replays such a partition's changelog in full.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
import orjson
import rocksdict
from faust.types import TP

log = logging.getLogger(__name__)

# RocksDB sizes per partition database (Faust's defaults are 64 MiB write buffers, three of
# them, and a 2 GiB block cache, for each of tables x partitions databases: hundreds of MB of
# resident memory on a small worker). Ignored by the memory store.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 2 * 1024**2,
}


class LedgerTable(faust.Table[bytes, Any]):
    """A table that trusts its local store only for partitions held without a break.

    Faust asks every assigned changelog partition's persisted offset once per rebalance
    (`Recovery.on_rebalance`), and catches up from there. A partition held in the previous
    generation too (generation ids go up by one per rebalance of the group, and a member sees
    every one it takes part in) keeps that offset; one held last in an older generation, while
    others owned it or this worker was out of the group, is replayed from the beginning. The
    first assignment of a process trusts the store, as Faust does.
    """

    def persisted_offset(self, tp: TP) -> int | None:
        generation: int = self.app.consumer_generation_id
        held: dict[TP, int] = self.__dict__.setdefault("_held_in", {})
        previous = held.get(tp)
        held[tp] = generation
        offset: int | None = super().persisted_offset(tp)
        if offset is None or previous is None or generation - previous <= 1:
            return offset
        log.warning(
            "%s was last held in generation %s, this is %s: replaying its changelog in full",
            tp,
            previous,
            generation,
        )
        return None


class PartitionStore:
    """One table's local store, read and written a partition at a time, in bulk.

    The batch runtime's path around Faust's one-write-at-a-time table API: a partition's
    changed records go into its RocksDB database as one `WriteBatch` (the memory store, used
    by unit tests, takes them as a dict update), and the same bytes go to the changelog in
    one send by the caller. Values are JSON, as the table's own serializer writes them, so
    Faust's reads, recovery and web routing see the same records.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.changelog = table.changelog_topic.get_topic_name()
        data = table.data
        self._rocksdb = hasattr(data, "_db_for_partition")

    def get(self, partition: int, key: bytes) -> Any | None:
        """The decoded value of `key` on `partition`, or None."""
        data = self.table.data
        if self._rocksdb:
            raw = data._db_for_partition(partition).get(key)
            return None if raw is None else orjson.loads(raw)
        return data.data.get(key)

    def write(self, partition: int, items: list[tuple[bytes, bytes | None]]) -> None:
        """Write (key, JSON value) pairs to `partition` at once; a None value deletes the key."""
        data = self.table.data
        if self._rocksdb:
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in items:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            data._db_for_partition(partition).write(batch)
            index = data._key_index
            for key, _ in items:
                index[key] = partition
            return
        for key, value in items:
            if value is None:
                data.data.pop(key, None)
                data._key_partition.pop(key, None)
            else:
                data.data[key] = orjson.loads(value)
                data._key_partition[key] = partition

    def persisted(self, partition: int, offset: int) -> None:
        """Record that the changelog holds this partition's writes up to `offset`."""
        self.table.data.set_persisted_offset(TP(self.changelog, partition), offset)

    async def send_changelog(
        self,
        producer: Any,
        partition: int,
        items: list[tuple[bytes, bytes | None]],
        then: Callable[[], None] | None = None,
    ) -> None:
        """The same records to the changelog partition in one send (`SafeProducer.send_many`).

        The persisted offset is set once Kafka acknowledged them (recovery catches up from
        it), and `then` is called.
        """

        def acked(offset: int) -> None:
            self.persisted(partition, offset)
            if then is not None:
                then()

        await producer.send_many(
            self.changelog,
            [(key, value, None) for key, value in items],
            partition=partition,
            on_delivered=acked,
        )


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
