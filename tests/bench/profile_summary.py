"""Summarise a py-spy `--format raw` profile (collapsed stacks): where the samples went.

`python -m tests.bench.profile_summary PROFILE.txt [--top 30]`

Inclusive share = samples whose stack contains the frame; self share = samples where it is the
innermost frame; components = each sample given to the first of `ATLAS_COMPONENTS` whose
pattern is in its stack (so the order of the rules matters). Idle samples are not in the file
(py-spy leaves them out unless `--idle`): shares are of the CPU the process used while sampled.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
_SITE = re.compile(r".*/site-packages/")


# (component, frame patterns): a sample goes to the first rule with a pattern in its stack.
ATLAS_COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("ledger: accounts/archive table writes", ("ManagedUserDict.__setitem__", "Store._set")),
    (
        "ledger: account read (RocksDB get, JSON, from_json)",
        ("Account.from_json", "Mapping.get (<frozen _collections_abc>)"),
    ),
    ("ledger: fold (rules, dedup marks, archive lookups)", ("fold (tables/ledger.py",)),
    ("ledger: Account.to_json", ("Account.to_json",)),
    ("ledger: outcomes handed to the producer", ("LedgerProcessor.send (streams/ledger",)),
    ("ledger: decode (pydantic)", ("decode_payment (streams/wire",)),
    ("ledger: rest of process()", ("LedgerProcessor.process",)),
    ("producer: Faust buffer -> aiokafka send, per record", ("ProducerBuffer._send_pending",)),
    ("producer: back-pressure (buffer full) in dispatch", ("ProducerBuffer.wait_until_ebb",)),
    ("producer: aiokafka sender, requests", ("aiokafka/producer/sender.py",)),
    (
        "producer: delivery callbacks",
        ("Topic._on_published", "SafeProducer._settled", "SafeProducer.send.<locals>.settle"),
    ),
    ("consumer: fetch thread (aiokafka)", ("Thread._bootstrap",)),
    (
        "consumer: drain, decode, dispatch to the stream",
        ("Consumer._drain_messages", "on_message (faust/transport/conductor", "Stream._passive"),
    ),
    ("stream: take_events, ack", ("faust/streams.py",)),
    ("commit", ("Consumer.commit", "_commit_handler", "_do_commit_offsets")),
    ("event loop: select", ("EpollSelector.select",)),
    ("event loop: callbacks and scheduling", ("asyncio/",)),
]


# The worker under `make bench-http`: the request path first, then what runs beside it.
HTTP_COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    # Inner frames first: every middleware is on the stack of everything inside it.
    ("http: group commit (PostgreSQL transaction)", ("GroupCommit.",)),
    ("http: rate limit (Redis)", ("RateLimiter.", "redis/asyncio")),
    ("http: handler (validation, ids, outbox rows)", ("WriteViews.",)),
    ("http: auth (key lookup)", ("ClientStore.", "hash_key (web/auth")),
    ("http: middlewares, access log", ("web/middleware.py", "web/tracing.py", "web/auth.py")),
    ("http: aiohttp request and response", ("aiohttp/",)),
    ("relay: outbox -> Kafka", ("OutboxRelay.",)),
    ("agents: ledger and transfers", ("install_agents.",)),
    ("producer: Faust buffer, aiokafka sender", ("ProducerBuffer.", "aiokafka/producer/")),
    ("consumer: fetch, dispatch", ("Thread._bootstrap", "Consumer._drain_messages", "conductor")),
    ("event loop: callbacks and scheduling", ("asyncio/",)),
]


@dataclass(frozen=True)
class Summary:
    total: int
    inclusive: list[tuple[str, int]]
    self_time: list[tuple[str, int]]
    by_package: list[tuple[str, int]]
    components: list[tuple[str, int]]


def _frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = _SITE.sub("", m["file"]).replace(str(Path.cwd()) + "/", "")
    return f"{m['func']} ({file})"


def _package(name: str) -> str:
    m = re.search(r"\(([^/)]+)", name)
    return m.group(1).removesuffix(".py") if m else "?"


def summarise(
    path: Path, top: int = 30, rules: list[tuple[str, tuple[str, ...]]] | None = None
) -> Summary:
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    components: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        for name in set(frames):
            inclusive[name] += count
        self_time[frames[-1]] += count
        by_package[_package(frames[-1])] += count
        components[_component(stack, ATLAS_COMPONENTS if rules is None else rules)] += count
    return Summary(
        total,
        inclusive.most_common(top),
        self_time.most_common(top),
        by_package.most_common(top),
        components.most_common(),
    )


def _component(stack: str, rules: list[tuple[str, tuple[str, ...]]]) -> str:
    for name, patterns in rules:
        if any(p in stack for p in patterns):
            return name
    return "other"


def render(summary: Summary) -> str:
    if summary.total == 0:
        return "no samples"
    pct = 100.0 / summary.total
    lines = [f"{summary.total} samples"]
    for title, rows in (
        ("components (first matching rule)", summary.components),
        ("inclusive (frame anywhere on the stack)", summary.inclusive),
        ("self (innermost frame)", summary.self_time),
        ("self, by top-level package or file", summary.by_package),
    ):
        lines.append(f"-- {title}")
        lines.extend(f"{n * pct:6.1f}%  {name}" for name, n in rows)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print(render(summarise(args.profile, args.top)))


if __name__ == "__main__":
    main()
