"""What the variant subprocesses share: their arguments and how they hand back a result.

A variant consumes the payments topic from a fresh consumer group until it has handled
`--expected` messages (or its time bound passes), writes its result as JSON to `--result`,
then waits for its standard input to close (the parent takes its last CPU/RSS sample first),
bounded by `--linger-s`.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson


@dataclass
class VariantResult:
    handled: int = 0
    # time.time() when the partitions were assigned (fetching starts), when the first message
    # was handled, and the last.
    assigned_wall: float | None = None
    first_wall: float | None = None
    last_wall: float | None = None
    duplicates: int = 0  # messages recognised as re-sends (dedup variants)
    decode_errors: int = 0
    sums: dict[str, int] = field(default_factory=dict)  # account id -> sum (dedup variants)
    timed_out: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--linger-s", type=float, default=60.0)
    parser.add_argument("--state-dir", type=Path, default=None)
    return parser.parse_args(argv)


def hand_back(result: VariantResult, path: Path, linger_s: float) -> None:
    """Write the result atomically, then wait (bounded) until the parent closes our stdin."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(result.to_json()))
    tmp.replace(path)
    deadline = time.monotonic() + linger_s
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sys.stdin], [], [], 0.5)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            return


def variant_main(description: str, run: Callable[[argparse.Namespace], VariantResult]) -> None:
    """A variant process: parse the arguments, run, hand back the result or the error."""
    args = parse_args(description)
    try:
        result = run(args)
    except Exception as exc:
        result = VariantResult(error=repr(exc))
    hand_back(result, args.result, args.linger_s)
