"""The `atlas` command: Faust's command line on Atlas's app, plus Atlas's own subcommands."""

from __future__ import annotations

import os
import sys

from streams.logs import configure_logging
from streams.settings import get_settings

# Faust's command line spells levels its own way.
_FAUST_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}


def with_log_level(argv: list[str], level: str) -> list[str]:
    """`atlas worker` logs at the configured level unless the command line says otherwise."""
    if argv[1:2] != ["worker"] or any(
        a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in argv
    ):
        return argv
    return [*argv[:2], f"--loglevel={_FAUST_LEVELS[level]}", *argv[2:]]


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    sys.argv = with_log_level(sys.argv, settings.log_level)
    # Faust picks its event loop when it is first imported: uvloop unless told otherwise
    # (`-L aio` on the command line, or F_LOOP=aio).
    os.environ.setdefault("F_LOOP", settings.event_loop)
    from streams import client_commands, commands  # noqa: F401  (registers the subcommands)
    from streams.app import app

    app.main()
