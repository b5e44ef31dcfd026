"""The `atlas` command: Faust's command line on Atlas's app, plus Atlas's own subcommands."""

from __future__ import annotations

import sys

from streams.logs import configure_logging
from streams.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    argv = sys.argv[1:]
    # `atlas worker` logs at the configured level unless told otherwise on the command line.
    if argv[:1] == ["worker"] and not any(
        a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in argv
    ):
        sys.argv.insert(2, f"--loglevel={settings.log_level}")
    from streams import commands  # noqa: F401  (registers the subcommands)
    from streams.app import app

    app.main()
