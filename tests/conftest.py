"""Suite-wide rules: in CI every tier runs, so a skipped test fails the run."""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped:
        if reporter:
            reporter.write_line(f"CI: {skipped} test(s) skipped; every tier must run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
