from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings


def make(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


def test_defaults_point_at_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    s = make(monkeypatch)
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.web_port == 6066
    assert s.topic_partitions == 8
    assert s.kafka_broker_urls == ["atlas-kafka://127.0.0.1:9092"]
    assert s.canonical_url == "http://127.0.0.1:6066"


def test_standard_url_variables_are_read_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    s = make(
        monkeypatch,
        DATABASE_URL="postgresql://u:hunter2@db:5432/x",
        REDIS_URL="redis://:pw@cache:6379/1",
        KAFKA_BOOTSTRAP_SERVERS="k1:9092, k2:9092",
        ATLAS_WEB_PORT="7001",
        ATLAS_LOG_LEVEL="debug",
    )
    assert s.database_url.get_secret_value() == "postgresql://u:hunter2@db:5432/x"
    assert s.kafka_broker_urls == ["atlas-kafka://k1:9092", "atlas-kafka://k2:9092"]
    assert s.web_port == 7001
    assert s.log_level == "DEBUG"


def test_secrets_never_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    s = make(
        monkeypatch, DATABASE_URL="postgresql://u:hunter2@db/x", REDIS_URL="redis://:s3cret@c/0"
    )
    text = repr(s) + str(s.model_dump())
    assert "hunter2" not in text
    assert "s3cret" not in text


def test_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    s = make(monkeypatch)
    with pytest.raises(ValidationError):
        s.web_port = 1  # type: ignore[misc]


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        make(monkeypatch, ATLAS_TOPIC_PARTITIONS="0")
    with pytest.raises(ValidationError):
        make(monkeypatch, ATLAS_LOG_LEVEL="LOUD")


def test_each_worker_gets_its_own_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    a = make(monkeypatch, ATLAS_WEB_PORT="6066")
    b = make(monkeypatch, ATLAS_WEB_PORT="6067")
    assert a.worker_data_dir != b.worker_data_dir
    c = make(monkeypatch, ATLAS_DATA_DIR="/srv/atlas")
    assert c.worker_data_dir == Path("/srv/atlas")


def test_env_sample_documents_every_setting() -> None:
    sample = (Path(__file__).resolve().parents[2] / ".env.sample").read_text()
    documented = {
        line.split("=", 1)[0].lstrip("# ").strip() for line in sample.splitlines() if "=" in line
    }
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = set(alias.choices) if alias is not None else {f"ATLAS_{name.upper()}"}  # type: ignore[union-attr]
        assert names & documented, f"{name} is not documented in .env.sample"


def test_gc_tuning_freezes_start_up_objects_and_raises_the_threshold() -> None:
    import gc

    from streams.app import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before  # 0: Python's defaults stay
        tune_gc(50_000)
        assert gc.get_threshold()[0] == 50_000
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
