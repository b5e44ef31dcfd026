"""Fencing (streams/membership.py and SafeConsumer's acks), against a fake group coordinator."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from streams.agents import retrying_kafka
from streams.app import AtlasApp
from streams.kafka import SafeConsumer
from streams.membership import Fenced, Membership


class Coordinator:
    """aiokafka's GroupCoordinator as Membership sees it: a generation and a heartbeat."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.answers: list[bool] = []

    async def _do_heartbeat(self) -> bool:
        return self.answers.pop(0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def batch(generation: int) -> list[Any]:
    return [SimpleNamespace(message=SimpleNamespace(generation_id=generation))]


def membership(coordinator: Coordinator | None, generation: list[int], clock: Clock) -> Membership:
    return Membership(lambda: coordinator, lambda: generation[0], 6.0, poll_s=0.001, clock=clock)


async def test_a_batch_runs_while_heartbeats_succeed() -> None:
    clock, coordinator = Clock(), Coordinator(3)
    m = membership(coordinator, [3], clock)
    assert m.state(3) == "held"  # assigned just now
    clock.now += 2.9
    assert m.state(3) == "held"
    clock.now += 0.2
    assert m.state(3) == "doubt", "no heartbeat for half a session timeout"
    coordinator.answers.append(True)
    await coordinator._do_heartbeat()  # the observed heartbeat renews the lease
    assert m.state(3) == "held"
    clock.now += 3.1
    coordinator.answers.append(False)
    await coordinator._do_heartbeat()  # a failed one does not
    assert m.state(3) == "doubt"


def test_a_reset_member_or_a_newer_generation_is_fenced() -> None:
    clock, coordinator, generation = Clock(), Coordinator(3), [3]
    m = membership(coordinator, generation, clock)
    assert m.state(3) == "held"
    coordinator.generation = -1  # aiokafka's reset_generation: unknown member
    assert m.state(3) == "fenced"
    coordinator.generation, generation[0] = 4, 4  # rejoined: a new generation
    assert m.state(3) == "fenced", "a batch delivered in generation 3 is stale"
    assert m.state(4) == "held"


def test_without_a_group_nothing_is_fenced() -> None:
    assert membership(None, [0], Clock()).state(0) == "held"


async def test_hold_waits_in_doubt_until_the_group_answers() -> None:
    clock, coordinator = Clock(), Coordinator(3)
    m = membership(coordinator, [3], clock)
    m.state(3)
    clock.now += 10

    async def heartbeat_later(ok: bool, then_generation: int | None = None) -> None:
        await asyncio.sleep(0.02)
        if then_generation is not None:
            coordinator.generation = then_generation
        coordinator.answers.append(ok)
        await coordinator._do_heartbeat()

    task = asyncio.ensure_future(heartbeat_later(True))
    await asyncio.wait_for(m.hold(batch(3)), 2)
    await task

    clock.now += 10
    task = asyncio.ensure_future(heartbeat_later(False, then_generation=-1))
    with pytest.raises(Fenced):
        await asyncio.wait_for(m.hold(batch(3)), 2)
    await task


async def test_a_fenced_batch_is_not_retried() -> None:
    calls = 0

    async def process(events: list[Any]) -> None:
        nonlocal calls
        calls += 1
        raise Fenced("generation 3 is no longer this worker's")

    with pytest.raises(Fenced):
        await retrying_kafka(5.0, first_delay_s=0.001)(process, [])
    assert calls == 1


# ---- SafeConsumer: stale and released messages record no offset ---------------------------------


def message(app: AtlasApp, offset: int, generation: int) -> Any:
    from faust.types import TP
    from faust.types.tuples import Message

    topic = f"{app.settings.topic_prefix}atlas.payments.v1"
    m = Message(topic, 0, offset, 0.0, None, None, b"k", b"v", None, generation_id=generation)
    m.tp = TP(topic, 0)
    return m


def test_an_ack_of_an_older_generation_records_nothing(app: AtlasApp) -> None:
    consumer = app.consumer
    assert isinstance(consumer, SafeConsumer)
    app.consumer_generation_id = 5
    app.topics.acks_enabled_for = lambda topic: True  # type: ignore[method-assign]
    old, current = message(app, 10, 4), message(app, 11, 5)
    consumer._unacked_messages.update({old, current})
    assert consumer.ack(old) is False
    assert consumer.ack(current) is True
    assert list(consumer._acked[current.tp]) == [11]
    assert old not in consumer._unacked_messages and old.acked


def test_released_messages_stop_holding_a_rebalance_and_record_nothing(app: AtlasApp) -> None:
    consumer = app.consumer
    assert isinstance(consumer, SafeConsumer)
    app.consumer_generation_id = 5
    app.topics.acks_enabled_for = lambda topic: True  # type: ignore[method-assign]
    held = [message(app, o, 5) for o in (20, 21)]
    consumer._unacked_messages.update(held)
    consumer.release(held)
    assert not consumer._unacked_messages  # wait_empty no longer waits for them
    assert all(consumer.ack(m) is False for m in held)  # take_events' ack finds them done
    assert not consumer._acked.get(held[0].tp)
