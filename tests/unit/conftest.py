"""Fixtures shared by the unit tier: an app that touches no network."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from streams.app import AtlasApp, create_app
from streams.settings import Settings


def unit_app(tmp_path: Path, **settings: Any) -> AtlasApp:
    """An Atlas app with in-memory tables and a name of its own; nothing connects."""
    return create_app(
        Settings(
            _env_file=None,
            app_name=f"atlas-unit-{uuid.uuid4().hex[:8]}",
            table_store="memory://",
            data_dir=tmp_path,
            **settings,
        )
    )


@pytest.fixture
def app(tmp_path: Path) -> AtlasApp:
    return unit_app(tmp_path)
