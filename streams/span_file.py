"""Finished spans as JSON lines: the console exporter's format and the test hook's file.

`ATLAS_TRACE_EXPORTER=file` appends one line per span to a file, so that tests can read the
spans of a real worker process; `console` prints the same lines on stdout.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    """Finished spans as JSON lines appended to a file (`ATLAS_TRACE_EXPORTER=file`)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("ab")
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = b"".join(json_line(s) + b"\n" for s in spans)
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def json_line(span: ReadableSpan) -> bytes:
    ctx = span.get_span_context()
    assert ctx is not None
    return orjson.dumps(
        {
            "name": span.name,
            "kind": span.kind.name,
            "trace_id": f"{ctx.trace_id:032x}",
            "span_id": f"{ctx.span_id:016x}",
            "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
            "start_ns": span.start_time,
            "end_ns": span.end_time,
            "status": span.status.status_code.name,
            "attributes": dict(span.attributes or {}),
            "links": [
                {
                    "trace_id": f"{link.context.trace_id:032x}",
                    "span_id": f"{link.context.span_id:016x}",
                }
                for link in span.links
            ],
            "events": [e.name for e in span.events],
            "service": span.resource.attributes.get("service.name"),
        },
        default=str,
    )
