"""Write tables from a batch: set the event whose partition a table write belongs to.

Faust picks a table write's changelog partition (and RocksDB store) from the *current event*, a
context variable that its stream iterator sets for one-at-a-time processing. A batch from
`take_events` has no current event in the agent's task, so each write is made under the event
it belongs to: the last event of that key in the batch, which sits on the key's partition.
(faust-streaming 0.15.3 has no public setter; `faust.streams._current_event` is pinned and
covered by the tests.)
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event


@contextmanager
def current_event(event: Any) -> Iterator[None]:
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
