"""Contracts with Faust, mode and aiokafka internals that Atlas leans on.

Atlas pins faust-streaming, mode-streaming and aiokafka to exact versions (pyproject.toml):
the commit-safe transport (`streams.kafka`), table routing (`web.reads`), the batch runtime
(`streams.batches`, `tables.store.PartitionStore`), the lag reader and the relay reach private
attributes of theirs. Each such attribute is named here with the shape the code expects, so
that an upgrade that moves one fails in the unit tier, loudly, instead of in a worker.
"""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.producer.message_accumulator import MessageAccumulator, MessageBatch
from aiokafka.producer.sender import SendProduceReqHandler
from aiokafka.protocol.metadata import MetadataRequest
from faust.app.router import Router
from faust.assignor.partition_assignor import PartitionAssignor
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import Message

from streams.app import AtlasApp
from streams.kafka import SafeConsumer, SafeProducer

REPO_ROOT = Path(__file__).resolve().parents[2]
PINNED = ("faust-streaming", "mode-streaming", "aiokafka")


def pins() -> dict[str, str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for requirement in project["dependencies"]:
        name, sep, wanted = requirement.partition("==")
        if sep:
            found[name.strip()] = wanted.strip()
    return found


@pytest.mark.parametrize("package", PINNED)
def test_the_internals_we_rely_on_are_pinned_to_exact_versions(package: str) -> None:
    pinned = pins().get(package)
    assert pinned is not None, f"{package} must be pinned exactly (==) in pyproject.toml"
    assert version(package) == pinned, (
        f"{package} {version(package)} is installed, the contracts below were checked against "
        f"{pinned}: re-run them against the new version before moving the pin"
    )


def signature_of(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


# ---- faust: the consumer's commit bookkeeping (streams.kafka.SafeConsumer) ----


def test_faust_consumer_bookkeeping(app: AtlasApp) -> None:
    consumer = app.consumer
    assert isinstance(consumer, SafeConsumer)
    assert isinstance(consumer._acked, dict)  # TP -> sorted list of acked offsets
    assert isinstance(consumer._committed_offset, dict)  # TP -> last committed offset
    assert isinstance(consumer._gap, dict)  # TP -> IntervalTree of compacted-away offsets
    assert hasattr(consumer._unacked_messages, "add")  # a WeakSet of Message
    assert isinstance(app.consumer_generation_id, int)
    assert signature_of(faust_consumer.Consumer._new_offset) == ["self", "tp"]
    assert signature_of(faust_aiokafka.Consumer._commit) == ["self", "offsets"]
    assert inspect.iscoroutinefunction(faust_consumer.Consumer.perform_seek)
    # The commit path awaits app.producer.flush() before committing (the commit gate).
    assert "self.app.producer.flush()" in inspect.getsource(faust_consumer.Consumer._commit_offsets)
    fields = signature_of(Message.__init__)
    for name in ("topic", "partition", "offset", "generation_id"):
        assert name in fields


def test_faust_transport_registry() -> None:
    assert isinstance(TRANSPORTS.aliases, dict)
    assert "kafka" in TRANSPORTS.aliases


# ---- faust: the producer (streams.kafka.SafeProducer) ----


def test_faust_producer_hooks(app: AtlasApp) -> None:
    producer = app.producer
    assert isinstance(producer, SafeProducer)
    assert producer._producer is None  # set by on_start to the AIOKafkaProducer
    assert callable(producer._ensure_producer)
    assert signature_of(faust_aiokafka.Producer._settings_extra) == ["self"]
    assert signature_of(faust_aiokafka.Producer._new_producer) == ["self", "transactional_id"]
    assert producer.request_timeout == app.settings.kafka_delivery_timeout_s
    assert signature_of(faust_aiokafka.Producer.send_soon) == ["self", "fut"]
    # The table router hashes a key on the producer's metadata.
    assert "producer._partition(" in inspect.getsource(faust_aiokafka.Producer.key_partition)


# ---- faust: table routing (web.reads) ----


def test_faust_router_and_assignor() -> None:
    assert signature_of(Router.route_req) == ["self", "table_name", "key", "web", "request"]
    assert "self.app.producer.key_partition" in inspect.getsource(PartitionAssignor.key_store)
    assert "_tps_url" in inspect.getsource(PartitionAssignor.key_store)


# ---- aiokafka: producer, accumulator, client ----


async def test_aiokafka_producer_internals() -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers="127.0.0.1:1", enable_idempotence=True, request_timeout_ms=7000
    )
    try:
        assert producer._txn_manager is not None  # idempotent: batches never expire on a retry
        assert producer._request_timeout_ms == 7000
        accumulator = producer._message_accumulator
        assert isinstance(accumulator, MessageAccumulator)
        assert accumulator._batch_ttl == 7.0
        assert isinstance(accumulator._batches, dict)
        assert hasattr(accumulator, "_pending_batches") and callable(accumulator.fail_all)
        assert isinstance(producer.client, AIOKafkaClient)
        assert isinstance(producer.client.cluster, ClusterMetadata)
        assert callable(producer.create_batch) and callable(producer.send_batch)
    finally:
        await producer.stop()
    assert "_drain_waiter" in inspect.getsource(MessageBatch.__init__)
    # `SafeProducer._append` hands a refused batch over again: aiokafka takes a batch only at
    # the end of `send_batch` (its waits for metadata and for room come first), and one batch
    # of a partition at a time (the next waits until the last left in a request).
    send_batch = inspect.getsource(AIOKafkaProducer.send_batch)
    assert send_batch.index("_wait_on_metadata") < send_batch.index("add_batch(")
    add_batch = inspect.getsource(MessageAccumulator.add_batch)
    assert "await pending[-1].wait_drain(" in add_batch
    assert add_batch.index("raise KafkaTimeoutError()") > add_batch.index("self._append_batch(")
    # Only a producer without a transaction manager expires a batch Kafka refused retriably.
    retry_rule = inspect.getsource(SendProduceReqHandler._can_retry)
    assert "self._sender._txn_manager is None and batch.expired()" in retry_rule


def test_aiokafka_client_metadata_api() -> None:
    for name in ("add_topic", "set_topics", "force_metadata_update", "get_random_node", "send"):
        assert callable(getattr(AIOKafkaClient, name))
    for name in ("partitions_for_topic", "available_partitions_for_topic"):
        assert callable(getattr(ClusterMetadata, name))
    request = MetadataRequest(["a"], allow_auto_topic_creation=False)
    assert request._topics == ["a"]
    assert request._allow_auto_topic_creation is False


async def test_aiokafka_clients_expose_their_client() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1")
    try:
        assert isinstance(consumer._client, AIOKafkaClient)
        assert isinstance(admin._client, AIOKafkaClient)
    finally:
        await consumer.stop()
        await admin.close()
        await asyncio.sleep(0)


# ---- fencing (streams.membership) and partition replay (tables.store.LedgerTable) ----


def test_aiokafka_group_coordinator_internals() -> None:
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    assert signature_of(GroupCoordinator._do_heartbeat) == ["self"]
    routine = inspect.getsource(GroupCoordinator._heartbeat_routine)
    assert "await self._do_heartbeat()" in routine  # looked up on the instance each time
    assert "self.generation = " in inspect.getsource(GroupCoordinator.reset_generation)
    assert "self._coordinator = GroupCoordinator(" in inspect.getsource(AIOKafkaConsumer.start)


def test_faust_consumer_thread_holds_the_aiokafka_consumer(app: AtlasApp) -> None:
    assert "self._thread = " in inspect.getsource(faust_consumer.ThreadDelegateConsumer.__init__)
    assert "self._consumer = " in inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread.on_start)
    assert app._group_coordinator() is None  # not started: no group yet


def test_faust_ack_bookkeeping_for_release(app: AtlasApp) -> None:
    consumer = app.consumer
    assert hasattr(consumer, "_waiting_for_ack")
    assert "if not message.acked:" in inspect.getsource(faust_consumer.Consumer.ack)
    assert "if not self.acked:" in inspect.getsource(Message.ack)


def test_faust_recovery_asks_each_partitions_persisted_offset(app: AtlasApp) -> None:
    from faust.tables.recovery import Recovery

    assert "table.persisted_offset(tp)" in inspect.getsource(Recovery._add)
    assert app.conf.Table.__name__ == "LedgerTable"


# ---- the batch runtime (streams.batches, SafeConsumer, tables.store.PartitionStore) ----


def test_faust_consumer_scheduler_hook_and_fetch_loop(app: AtlasApp) -> None:
    consumer = app.consumer
    # Faust sets its scheduler in __init__, before Service.__init__ calls __post_init__ (ours).
    init = inspect.getsource(faust_consumer.Consumer.__init__)
    assert "self.scheduler = self.app.conf.ConsumerScheduler()" in init
    assert init.index("self.scheduler = ") < init.index("super().__init__(")
    assert consumer.scheduler is consumer.batches  # installed after Faust's own
    getmany = inspect.getsource(faust_consumer.Consumer.getmany)
    assert "self.scheduler.iterate(records)" in getmany
    assert "yield tp, to_message(tp, record)" in getmany
    assert signature_of(faust_aiokafka.Consumer._to_message) == ["self", "tp", "record"]
    # The drain loop gets `self.getmany` (ours), and sets the read offset after delivery.
    drain = inspect.getsource(faust_consumer.Consumer._drain_messages)
    assert "getmany = self.getmany" in drain
    assert "set_read_offset(tp, offset)" in drain
    assert "self._n_acked >= commit_every" in drain
    assert isinstance(consumer._read_offset, dict)
    assert isinstance(consumer._acked_index, dict)
    assert isinstance(consumer._n_acked, int)
    assert signature_of(faust_consumer.Consumer.seek) == ["self", "partition", "offset"]
    # A final ack goes to Consumer.ack (ours), where a batch records its every offset.
    from faust.types.tuples import ConsumerMessage

    assert "consumer.ack(self)" in inspect.getsource(ConsumerMessage.on_final_ack)


def test_faust_ack_lock_and_stream_acks() -> None:
    from faust.streams import Stream
    from faust.types import tuples

    assert hasattr(tuples.ack_lock, "acquire")  # a (reentrant) lock shared by every ack path
    assert "event.ack()" in inspect.getsource(Stream.ack)
    assert callable(Stream.noack)


def test_faust_topic_decode_is_compiled_per_topic() -> None:
    import faust

    assert "self._compile_decode()" in inspect.getsource(faust.Topic.__init__)
    assert "self.decode = " in inspect.getsource(faust.Topic._compile_decode)
    # The conductor decodes a message with the first subscribed channel's decode.
    from faust.transport.conductor import ConductorCompiler

    assert "await chan.decode(message, propagate=True)" in inspect.getsource(
        ConductorCompiler.build
    )


def test_aiokafka_fetch_position_and_highwater() -> None:
    from aiokafka.consumer.subscription_state import TopicPartitionState

    for name in ("highwater", "position", "has_valid_position"):
        assert name in inspect.getsource(TopicPartitionState)
    assert "assignment.state_value(partition)" in inspect.getsource(AIOKafkaConsumer.highwater)


async def test_aiokafka_batch_builder_counts_and_a_batch_resolves_to_its_base_offset() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    try:
        batch = producer.create_batch()
        assert batch.append(key=b"k", value=b"v", timestamp=None, headers=[]) is not None
        assert batch.record_count() == 1
    finally:
        await producer.stop()
    done = inspect.getsource(MessageBatch.done)
    assert "base_offset" in done and "self.future.set_result" in done


def test_faust_rocksdb_and_memory_store_internals(tmp_path: Path) -> None:
    from faust.stores import memory, rocksdb

    assert signature_of(rocksdb.Store._db_for_partition) == ["self", "partition"]
    assert "self._key_index = LRUCache(" in inspect.getsource(rocksdb.Store.__init__)
    assert signature_of(rocksdb.Store.set_persisted_offset) == ["self", "tp", "offset"]
    assert "self.data: MutableMapping = {}" in inspect.getsource(memory.Store.__post_init__)
    assert "self._key_partition" in inspect.getsource(memory.Store.__post_init__)
    import rocksdict

    assert callable(rocksdict.WriteBatch)


def test_faust_clears_the_agents_queues_after_its_closing_seek(app: AtlasApp) -> None:
    """`SafeConsumer` holds input records until the rebalance has ended (`app.rebalancing`)."""
    import faust
    from faust.tables.recovery import Recovery

    done = inspect.getsource(Recovery.on_recovery_completed)
    order = [
        "consumer.resume_partitions(",
        "consumer.perform_seek()",
        "self.app.flow_control.resume()",
        "self.app.on_rebalance_end()",
    ]
    places = [done.index(step) for step in order]
    assert places == sorted(places), "Faust changed how a rebalance ends: re-check the hold"
    assert app.rebalancing is False
    assert "self.rebalancing = True" in inspect.getsource(faust.App.on_rebalance_start)
    assert "self.rebalancing = False" in inspect.getsource(faust.App.on_rebalance_end)
    # The committed offsets come from aiokafka's coordinator in one request; -1 is "none".
    committed = inspect.getsource(AIOKafkaConsumer.committed)
    assert "self._coordinator.fetch_committed_offsets([partition])" in committed
    assert "commit_map[partition].offset" in committed and "committed == -1" in committed
    # aiokafka's own seek skips partitions committed at 0 or not at all; ours replaces it.
    assert "if offset and offset > 0:" in inspect.getsource(AIOKafkaConsumer.seek_to_committed)
    perform = inspect.getsource(faust_consumer.Consumer.perform_seek)
    assert "self._read_offset" in perform and "self._committed_offset.update" in perform
    # The closing seek leaves changelogs to recovery, and restarts it when a rebalance came in.
    assert isinstance(app.tables.changelog_topics, set) and app.in_recovery is False
    assert "except RebalanceAgain" in inspect.getsource(Recovery._restart_recovery.fun)
    # The aiokafka consumer runs on the consumer thread's own loop; calls into it go through there.
    thread = faust_aiokafka.AIOKafkaConsumerThread
    assert "self.call_thread(" in inspect.getsource(thread.seek_to_committed)
    assert callable(thread._ensure_consumer)
