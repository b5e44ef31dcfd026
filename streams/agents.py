"""The agents: thin shells that hand batches to the processors.

An event is one partition's records of one fetch (`streams.batches`), in time order across the
ledger's inputs; it is acked once its batch is done. Concurrency is 1 so batches run in order.
An exception that escapes a processor is a bug or a lost dependency, never bad input (that goes
to the dead-letter topic).

A retriable Kafka error (a leader election, a broker restart: `streams.kafka.retriable`) runs the
same batch again, with exponential backoff and full jitter, for at most the delivery timeout: the
dedup marks make a re-run re-send the effects of what the first run applied, never apply it
twice. Any other error, or one that outlives the delivery timeout, stops the worker without
committing the batch it did not finish, which is read again after restart.

Before every attempt the worker checks that it still surely owns the batch's partitions
(`streams.membership`): a fenced batch is abandoned, neither applied nor acked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import backoff
import faust

from streams.batches import records_of
from streams.kafka import SafeConsumer, retriable
from streams.ledger import LedgerProcessor
from streams.logs import get_logger
from streams.membership import Fenced, Membership
from streams.resilience import RETRIES
from streams.settings import Settings
from streams.topics import Topics
from streams.tracing import consuming
from streams.transfers import TransfersProcessor

log = get_logger(__name__)

Process = Callable[[Sequence[Any]], Awaitable[None]]


def install_agents(
    app: faust.App,
    settings: Settings,
    topics: Topics,
    ledger: LedgerProcessor,
    transfers: TransfersProcessor,
    membership: Membership,
) -> tuple[Any, Any]:
    again = retrying_kafka(settings.kafka_delivery_timeout_s)

    async def run(name: str, stream: Any, process: Process) -> None:
        async def attempt(batch: Sequence[Any], event: Any) -> None:
            await membership.hold([event])  # every attempt, a retry's too: never when fenced
            await process(batch)

        # Acked here, once the batch is done (a batch's ack covers its every offset).
        async for event in stream.noack().events():
            batch = records_of(event)
            try:
                with consuming(name, batch):  # spans per record only while tracing is on
                    await again(attempt, batch, event)
            except Fenced as exc:
                # Neither applied nor acked: the partition's owner reads the batch again.
                cast(SafeConsumer, app.consumer).release([event.message])
                log.warning("batch abandoned: this worker was fenced", agent=name, reason=str(exc))
                continue
            except Exception as exc:
                # Refuse every later commit first, so the batch is read again after restart.
                fail = getattr(app.producer, "fail", None)
                if fail is not None:
                    fail(exc)
                log.exception("batch failed; stopping the worker so it is read again", agent=name)
                await app.crash(exc)
                raise
            await stream.ack(event)

    @app.agent(topics.account_inputs, name="ledger", concurrency=1)
    async def ledger_agent(stream: Any) -> None:
        await run("ledger", stream, ledger.process)

    @app.agent(topics.transfer_events, name="transfers", concurrency=1)
    async def transfers_agent(stream: Any) -> None:
        await run("transfers", stream, transfers.process)

    return ledger_agent, transfers_agent


def retrying_kafka(
    max_time_s: float, first_delay_s: float = 0.1, max_delay_s: float = 5.0
) -> Callable[..., Awaitable[None]]:
    """Run a batch, again while it fails with a retriable Kafka error, for up to `max_time_s`."""

    def on_backoff(details: Any) -> None:
        RETRIES.labels("kafka").inc()
        log.warning(
            "batch hit a retriable Kafka error; running it again",
            error=repr(details["exception"]),
            attempt=details["tries"],
            retry_in_s=round(details["wait"], 3),
        )

    @backoff.on_exception(
        backoff.expo,
        Exception,
        giveup=lambda exc: not retriable(exc),
        max_time=max_time_s,
        jitter=backoff.full_jitter,
        factor=first_delay_s,
        max_value=max_delay_s,
        on_backoff=on_backoff,
        logger=None,
    )
    async def attempt(run: Callable[..., Awaitable[None]], *args: Any) -> None:
        await run(*args)

    return attempt
