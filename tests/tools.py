"""Command-line tools the tests run, from the Debian packages `make system-deps` installs.

A missing tool fails the test that needs it, with the line that installs it: every tier runs
everywhere, none is skipped.
"""

from __future__ import annotations

import shutil

import pytest


def require(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if found is None:
        pytest.fail(f"{binary} is not installed: run `make system-deps` (Debian package {package})")
    return found
