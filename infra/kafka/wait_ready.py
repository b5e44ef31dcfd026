#!/usr/bin/env python3
"""Wait until a Kafka broker answers real protocol requests (standard library only).

Sends ApiVersions v0 (which every broker version accepts) and then a Metadata request
(v4: Kafka 4.x removed v0-v3) asking for no topics, and succeeds once the broker lists
at least one live broker, i.e. it has joined its cluster and clients can use it.

usage: wait_ready.py HOST PORT [--timeout SECONDS] [--pid PID]   (timeout 0 = a single try)
  --pid: give up as soon as that process (the broker being started) has exited
exit codes: 0 ready, 1 nothing listens on the port, 2 something listens but is not a ready
Kafka broker, 3 the process given by --pid exited
"""

import argparse
import socket
import struct
import sys
import time

API_METADATA, API_VERSIONS = 3, 18
METADATA_VERSION = 4  # last non-"flexible" version: plain encoding, no tagged fields


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return s


def request(
    sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes = b""
) -> Reader:
    client_id = b"atlas-wait-ready"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    reader = Reader(recv_exact(sock, size))
    if reader.take(">i") != correlation_id:
        raise ValueError("correlation id mismatch")
    return reader


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return buf


def probe(host: str, port: int) -> tuple[int, str]:
    """Return (exit code, message) for one attempt."""
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError as exc:
        return 1, f"no connection to {host}:{port} ({exc})"
    try:
        with sock:
            r = request(sock, API_VERSIONS, 0, 1)
            error = r.take(">h")
            if error:
                return 2, f"ApiVersions error code {error}"
            versions = {}
            for _ in range(r.take(">i")):
                key, lo, hi = r.take(">h"), r.take(">h"), r.take(">h")
                versions[key] = (lo, hi)
            lo, hi = versions.get(API_METADATA, (0, -1))
            if not lo <= METADATA_VERSION <= hi:
                return 2, f"broker does not support Metadata v{METADATA_VERSION} (range {lo}-{hi})"
            # topics: empty array (= no topics), allow_auto_topic_creation: false
            r = request(sock, API_METADATA, METADATA_VERSION, 2, struct.pack(">ib", 0, 0))
            r.take(">i")  # throttle_time_ms
            brokers = []
            for _ in range(r.take(">i")):
                node_id, bhost, bport, _rack = r.take(">i"), r.string(), r.take(">i"), r.string()
                brokers.append(f"{node_id}@{bhost}:{bport}")
            cluster_id, controller = r.string(), r.take(">i")
            if not brokers:
                return 2, "broker answers but has no live brokers in its metadata yet"
            return 0, (
                f"answers at {host}:{port} (cluster {cluster_id}, "
                f"brokers {', '.join(brokers)}, controller {controller})"
            )
    except (OSError, ValueError, struct.error) as exc:
        return 2, f"{host}:{port} does not speak the Kafka protocol yet ({exc})"


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a dead child not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--pid", type=int)
    args = parser.parse_args()

    deadline = time.monotonic() + args.timeout
    while True:
        code, message = probe(args.host, args.port)
        if code == 0 or time.monotonic() >= deadline:
            break
        if args.pid and not alive(args.pid):
            code, message = 3, f"process {args.pid} exited before Kafka was ready"
            break
        time.sleep(0.5)
    print(message, file=sys.stdout if code == 0 else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
