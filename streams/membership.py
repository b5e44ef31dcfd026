"""Fencing: a worker processes a batch only while it is surely still in its consumer group.

Kafka's group coordinator expires a member that has not heartbeat within the session timeout
and gives its partitions to others; the member learns of it only at its next heartbeat. A
worker that goes on applying batches meanwhile (a broker restart, a pause) writes changelog
records beside the partitions' new owners: lost updates, with nothing to fence them in
at-least-once mode. So every batch first asks `Membership.hold`:

- **held**: the last successful heartbeat (or the assignment) is less than half a session
  timeout old, and the coordinator still knows this worker in the generation its partitions
  were assigned in. The batch runs.
- **fenced**: the coordinator reset this member (unknown member, illegal generation) or a new
  generation began: the batch is abandoned, neither applied nor acked (`SafeConsumer.ack`
  drops the acks of a fenced or stale generation); the partitions' next owner reads it again
  from the committed offset.
- **in doubt**: the generation stands but heartbeats have not succeeded lately (the broker is
  away): wait, until a heartbeat settles it one way or the other.

It leans on aiokafka 0.14's group coordinator (`_coordinator`, `generation`, `_do_heartbeat`),
pinned and contract-tested (tests/unit/test_contracts.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from streams.logs import get_logger

log = get_logger(__name__)


class Fenced(Exception):
    """This worker may no longer own the batch's partitions: it must not apply the batch."""


class Membership:
    def __init__(
        self,
        coordinator: Callable[[], Any],
        generation: Callable[[], int],
        session_timeout_s: float,
        poll_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._coordinator = coordinator  # the aiokafka GroupCoordinator, once there is one
        self._generation = generation  # the generation Faust's partitions were assigned in
        self.lease_s = session_timeout_s / 2
        self.poll_s = poll_s
        self._clock = clock
        self._observed: Any = None
        self._seen_generation: int | None = None
        self._renewed_at = -float("inf")

    def _watch(self) -> Any:
        """The coordinator, its heartbeats observed (once per coordinator object)."""
        coordinator = self._coordinator()
        if coordinator is not None and coordinator is not self._observed:
            heartbeat = coordinator._do_heartbeat

            async def observed() -> bool:
                ok: bool = await heartbeat()
                if ok:  # NoError, or a rebalance under way: still a member until it rejoins
                    self._renewed_at = self._clock()
                return ok

            coordinator._do_heartbeat = observed
            self._observed = coordinator
            self._renewed_at = self._clock()
        return coordinator

    def state(self, batch_generation: int) -> str:
        """`held`, `fenced` or `doubt` for a batch delivered in `batch_generation`."""
        coordinator = self._watch()
        generation = self._generation()
        if batch_generation != generation:
            return "fenced"
        if coordinator is None:
            return "held"  # no group yet (tests without Kafka): nothing to be fenced from
        if coordinator.generation != generation:
            return "fenced"
        if generation != self._seen_generation:  # assigned just now: the join is the proof
            self._seen_generation = generation
            self._renewed_at = self._clock()
        if self._clock() - self._renewed_at < self.lease_s:
            return "held"
        return "doubt"

    async def hold(self, events: Sequence[Any]) -> None:
        """Return while the batch's partitions are surely still this worker's; else `Fenced`."""
        generation = min(e.message.generation_id for e in events)
        waited = False
        while (state := self.state(generation)) == "doubt":
            if not waited:
                log.warning(
                    "no heartbeat for a while: holding the batch until the group answers",
                    lease_s=self.lease_s,
                )
                waited = True
            await asyncio.sleep(self.poll_s)
        if state == "fenced":
            raise Fenced(f"generation {generation} is no longer this worker's")
        if waited:
            log.info("the group answered: batch goes on")
