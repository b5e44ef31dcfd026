from datetime import UTC, datetime
from pathlib import Path

import pytest

from tables.errors import MigrationError
from web.migrate import AppliedMigration, compare, discover, next_filename

REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def write(directory: Path, name: str, sql: str = "SELECT 1;") -> Path:
    path = directory / name
    path.write_text(sql)
    return path


def applied(version: int, name: str, checksum: str) -> AppliedMigration:
    return AppliedMigration(version, name, checksum, datetime.now(UTC))


def test_the_project_migrations_are_well_formed() -> None:
    files = discover(REPO_MIGRATIONS)
    assert files, "no migrations found"
    assert [m.version for m in files] == list(range(1, len(files) + 1))


def test_discover_orders_by_version_and_rejects_bad_names(tmp_path: Path) -> None:
    write(tmp_path, "0002_second.sql")
    write(tmp_path, "0001_first.sql")
    assert [m.name for m in discover(tmp_path)] == ["first", "second"]
    write(tmp_path, "3_bad.sql")
    with pytest.raises(MigrationError):
        discover(tmp_path)


def test_duplicate_versions_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql")
    write(tmp_path, "0001_b.sql")
    with pytest.raises(MigrationError):
        discover(tmp_path)


def test_checksum_changes_when_the_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "0001_first.sql", "CREATE TABLE a (id int);")
    (m,) = discover(tmp_path)
    before = m.checksum
    path.write_text("CREATE TABLE a (id bigint);")
    assert m.checksum != before


def test_compare_finds_pending_changed_and_unknown(tmp_path: Path) -> None:
    write(tmp_path, "0001_first.sql", "a")
    write(tmp_path, "0002_second.sql", "b")
    write(tmp_path, "0003_third.sql", "c")
    first, second, third = discover(tmp_path)
    status = compare(
        [first, second, third],
        [
            applied(1, "first", first.checksum),
            applied(2, "second", "0" * 64),
            applied(9, "gone", "x"),
        ],
    )
    assert [m.version for m in status.pending] == [3]
    assert [m.version for m in status.changed] == [2]
    assert [a.version for a in status.unknown] == [9]
    assert not status.up_to_date
    assert status.problem() is not None and "0002_second.sql" in status.problem()  # type: ignore[operator]


def test_compare_up_to_date(tmp_path: Path) -> None:
    write(tmp_path, "0001_first.sql")
    (m,) = discover(tmp_path)
    status = compare([m], [applied(1, "first", m.checksum)])
    assert status.up_to_date
    assert status.problem() is None


def test_next_filename_slugs_the_message(tmp_path: Path) -> None:
    assert next_filename(tmp_path, "Add accounts!") == "0001_add_accounts.sql"
    write(tmp_path, "0007_x.sql")
    assert next_filename(tmp_path, "outbox: reaper index") == "0008_outbox_reaper_index.sql"
