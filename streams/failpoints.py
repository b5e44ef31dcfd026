"""Named points of the batch runtime where a worker can be made to die, for the crash tests.

`ATLAS_FAILPOINT=<name>:<n>` makes the worker SIGKILL itself (no shutdown code runs, as in a
crash) the n-th time it passes the point `<name>`. Unset, a point costs one comparison. The
points, in the order a ledger batch passes them (`streams.ledger`):

- `ledger.state-written`: every partition's `WriteBatch` is in the local store; nothing of the
  batch was handed to Kafka yet;
- `ledger.changelog-acked`: Kafka acknowledged a partition's accounts changelog records; the
  batch's outcomes, legs and transfer events are in flight, and its offsets uncommitted.
"""

from __future__ import annotations

import os
import signal

_NAME, _, _AT = os.environ.get("ATLAS_FAILPOINT", "").partition(":")
_passed = 0


def reach(name: str) -> None:
    """Die here if this is the armed point and its turn has come."""
    global _passed
    if name != _NAME:
        return
    _passed += 1
    if _passed >= int(_AT or 1):
        os.kill(os.getpid(), signal.SIGKILL)
