"""The agents: thin shells that hand batches to the processors.

Concurrency is 1 so a partition's batches run in order. An exception that escapes a processor is
a bug or a lost dependency, never bad input (that goes to the dead-letter topic): the worker
stops without committing the batch it did not finish, which is read again after restart.
"""

from __future__ import annotations

from typing import Any

import faust

from streams.ledger import LedgerProcessor
from streams.logs import get_logger
from streams.settings import Settings
from streams.topics import Topics
from streams.tracing import consuming
from streams.transfers import TransfersProcessor

log = get_logger(__name__)


def install_agents(
    app: faust.App,
    settings: Settings,
    topics: Topics,
    ledger: LedgerProcessor,
    transfers: TransfersProcessor,
) -> tuple[Any, Any]:
    batch, within = settings.batch_max, settings.batch_within_s

    async def run(name: str, stream: Any, process: Any) -> None:
        async for events in stream.take_events(batch, within=within):
            try:
                with consuming(name, events):  # spans per event only while tracing is on
                    await process(events)
            except Exception as exc:
                # Faust acks a batch even when its body raises (take_events acks in a finally):
                # refuse every later commit first, so the batch is read again after restart.
                fail = getattr(app.producer, "fail", None)
                if fail is not None:
                    fail(exc)
                log.exception("batch failed; stopping the worker so it is read again", agent=name)
                await app.crash(exc)
                raise

    @app.agent(topics.account_inputs, name="ledger", concurrency=1)
    async def ledger_agent(stream: Any) -> None:
        await run("ledger", stream, ledger.process)

    @app.agent(topics.transfer_events, name="transfers", concurrency=1)
    async def transfers_agent(stream: Any) -> None:
        await run("transfers", stream, transfers.process)

    return ledger_agent, transfers_agent
