"""JSON logging through structlog, for our own loggers and every stdlib logger (Faust, aiokafka).

Each line carries timestamp, level, logger and event, plus whatever is bound in the context
(the request's correlation id, set by the web middleware; the event's or outbox row's
correlation id and trace id, bound by the agents and the relay) and the current span's
`trace_id` and `span_id`. Exceptions are structured (`exception`: type, value, frames, never
local variables). Last before rendering, `redact_secrets` masks secrets in every line.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import structlog
from opentelemetry import trace
from structlog.tracebacks import ExceptionDictTransformer

from streams.metrics import PRODUCER_BUFFER_FULL

# A key names a secret when one of its words (split at _ - . or case) is one of these.
SECRET_KEYS = re.compile(
    r"(?:^|[_.\-])(?:password|passwd|pwd|secret|token|api_?key|authorization|cookie|"
    r"credentials?|dsn|private_?key)(?:$|[_.\-])",
    re.IGNORECASE,
)
REDACTED = "***"
# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^@/\s]+@")
# An Authorization header's credentials, and Atlas API keys wherever they appear.
_BEARER = re.compile(r"(?P<head>\bBearer\s+)[A-Za-z0-9._~+/=\-_]+", re.IGNORECASE)
_AUTHORIZATION = re.compile(
    r"(?P<head>\bAuthorization\s*[:=]\s*(?:b?['\"])?(?:[A-Za-z]+\s+)?)[^\s'\"]+", re.IGNORECASE
)
_API_KEY = re.compile(r"atl_[A-Za-z0-9_\-]{8,}")
# libpq's key=value form: password=...
_ASSIGNED_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pwd)\s*=\s*)[^\s&;,]+", re.I)


def redact_text(text: str) -> str:
    """Passwords in URLs, bearer credentials and API keys in free text, masked."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)
    if " " in text or "\t" in text:
        text = _BEARER.sub(rf"\g<head>{REDACTED}", text)
        text = _AUTHORIZATION.sub(rf"\g<head>{REDACTED}", text)
    if "atl_" in text:
        text = _API_KEY.sub(f"atl_{REDACTED}", text)
    if "=" in text:
        text = _ASSIGNED_PASSWORD.sub(rf"\g<head>{REDACTED}", text)
    return text


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth > 8:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED
            if isinstance(k, str) and SECRET_KEYS.search(k) and v not in (None, "")
            else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, depth + 1) for v in value]
    return value


def redact_secrets(_: Any, __: str, event_dict: Any) -> Any:
    """A processor: values of secret-named keys replaced, secrets in strings masked."""
    return _redact(event_dict)


def add_trace_context(_: Any, __: str, event_dict: Any) -> Any:
    """The current span's trace and span id, unless the line already names a trace."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid and "trace_id" not in event_dict:
        event_dict["trace_id"] = f"{ctx.trace_id:032x}"
        event_dict["span_id"] = f"{ctx.span_id:016x}"
    return event_dict


_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    add_trace_context,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ExtraAdder(),
]


class ProducerBufferFull(logging.Filter):
    """Faust's "producer buffer full" warning, counted every time and logged once a minute.

    Faust logs it each time its send buffer passes 100 records and delivery of input waits for
    it to drain: its flow control at work, hundreds of times a minute under load. The count is
    `atlas_producer_buffer_full_total`; the log keeps one line per `every_s` as a reminder.
    """

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("producer buffer full"):
            return True
        PRODUCER_BUFFER_FULL.inc()
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return False
        self._last = now
        return True


def logging_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` that renders every record as one JSON line on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.ExceptionRenderer(
                        ExceptionDictTransformer(show_locals=False, use_rich=False)
                    ),
                    redact_secrets,  # last: it sees the exception and every bound field
                    structlog.processors.JSONRenderer(),
                ],
                "foreign_pre_chain": _SHARED_PROCESSORS,
            }
        },
        "filters": {"producer_buffer_full": {"()": ProducerBufferFull}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # Chatty at INFO and off the hot path only when kept at WARNING.
            "aiokafka": {"level": "WARNING"},
            "aiohttp.access": {"level": "WARNING"},
            "faust.transport.producer": {"filters": ["producer_buffer_full"]},
        },
    }


def configure_logging(level: str) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    import logging.config

    logging.config.dictConfig(logging_config(level))
    structlog.configure(
        processors=[
            # First: a line below its logger's level costs one level check, not a rendering.
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def reset_root_level(level: str) -> None:
    """Undo Faust's start-up spinner, which leaves the root logger at DEBUG.

    With the root at DEBUG every `log.debug` on Faust's send path builds a record even though
    the handler drops it: a measurable cost per event.
    """
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if handler.__class__.__name__ == "SpinnerHandler":
            root.removeHandler(handler)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


__all__ = [
    "configure_logging",
    "get_logger",
    "logging_config",
    "redact_secrets",
    "redact_text",
    "reset_root_level",
]
