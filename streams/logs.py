"""JSON logging through structlog, for our own loggers and every stdlib logger (Faust, aiokafka).

Each line carries timestamp, level, logger and event, plus whatever is bound in the context
(the request's correlation id, set by the web middleware).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ExtraAdder(),
]


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
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
                "foreign_pre_chain": _SHARED_PROCESSORS,
            }
        },
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
        },
    }


def configure_logging(level: str) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    import logging.config

    logging.config.dictConfig(logging_config(level))
    structlog.configure(
        processors=[
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


__all__ = ["configure_logging", "get_logger", "logging_config", "reset_root_level"]
