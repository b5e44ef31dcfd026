"""The one settings object, read from the environment and `.env`.

Every variable is documented in `.env.sample`. Values are frozen once read; secrets are
`SecretStr` so they never appear in a repr or a log line.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseSettings):
    """Atlas configuration. Variables are prefixed `ATLAS_` except the three standard URLs."""

    model_config = SettingsConfigDict(
        env_prefix="ATLAS_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    environment: Literal["development", "test", "production"] = "development"
    app_name: str = "atlas"
    log_level: LogLevel = "INFO"

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ATLAS_KAFKA_BOOTSTRAP_SERVERS"),
    )
    database_url: SecretStr = Field(
        default=SecretStr("postgresql://atlas:atlas@127.0.0.1:5433/atlas"),
        validation_alias=AliasChoices("DATABASE_URL", "ATLAS_DATABASE_URL"),
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6380/0"),
        validation_alias=AliasChoices("REDIS_URL", "ATLAS_REDIS_URL"),
    )

    web_bind: str = "127.0.0.1"
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)

    topic_partitions: int = Field(default=8, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)
    # Namespaces every topic (empty in production; tests keep runs apart with it).
    topic_prefix: str = ""

    # Outbox relay (streams/relay.py).
    relay_batch: int = Field(default=500, ge=1)
    relay_poll_s: float = Field(default=1.0, gt=0)
    relay_publish_timeout_s: float = Field(default=10.0, gt=0)
    relay_reap_every_s: float = Field(default=60.0, gt=0)
    # The longest backoff between two tries while PostgreSQL or Kafka is down (full jitter), and
    # so the longest the relay waits to publish again once the dependency is back.
    relay_retry_max_s: float = Field(default=5.0, gt=0)
    outbox_retention_s: float = Field(default=24 * 3600.0, gt=0)

    # Per-client rate limit (GCRA): sustained requests per second, and the burst on top.
    rate_limit_per_s: float = Field(default=200.0, gt=0)
    rate_limit_burst: int = Field(default=400, ge=1)
    # A busy client's permits are leased to a worker for this long (0: every request asks
    # Redis); a lease holds at most `rate_limit_per_s * rate_limit_lease_s` permits.
    rate_limit_lease_s: float = Field(default=0.05, ge=0, le=1)

    # The worker's event loop: uvloop cuts the per-request and per-message scheduling cost.
    event_loop: Literal["uvloop", "aio"] = "uvloop"
    # Allocations between two collections of the youngest generation once the worker is up
    # (Python's default is 700); 0 leaves the collector as Python sets it. See app.tune_gc.
    gc_threshold: int = Field(default=50_000, ge=0)

    # Backpressure on the write path: a request's whole budget (problem+json 504 past it), the
    # largest body accepted (413 past it), and the unpublished-outbox size past which writes
    # are refused with 503 until the relay catches up (checked every `outbox_backlog_poll_s`).
    request_deadline_s: float = Field(default=5.0, gt=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    outbox_backlog_limit: int = Field(default=50_000, ge=1)
    outbox_backlog_poll_s: float = Field(default=1.0, gt=0)
    # How often each worker reads its group's committed and end offsets (streams/lag.py).
    lag_poll_s: float = Field(default=5.0, gt=0)
    # How often each worker counts the accounts of its partitions (streams/census.py).
    census_interval_s: float = Field(default=30.0, gt=0)
    # Other consumer groups of the same source topics to watch too (comma-separated), e.g. the
    # group of a deployment being replaced; each gets the same metrics and `?group=` on the API.
    lag_watch_groups: str = ""

    # Resilience (streams/resilience.py): a dependency's breaker opens after `breaker_threshold`
    # transient failures in a row and lets one call through after `breaker_reset_s`; transient
    # failures of a write are retried at most `retry_max_tries` times within `retry_max_s`.
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)
    retry_max_tries: int = Field(default=3, ge=1)
    retry_max_s: float = Field(default=1.0, gt=0)

    # How long an Idempotency-Key is remembered (its response replayed) before it is reaped.
    idempotency_retention_s: float = Field(default=24 * 3600.0, gt=0)

    # Ledger rules and the stream hot path.
    max_amount: int = Field(default=100_000_000_000, ge=1)
    dedup_window: int = Field(default=32, ge=1)
    dedup_horizon_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # The most records in one agent batch (one partition's records of one fetch: streams.batches).
    # Above what one fetch brings per partition (1 MiB, about 5,000 payments), so a fetch is not
    # cut into a full batch and a small one: every batch writes each account it touches once.
    batch_max: int = Field(default=10_000, ge=1)
    # How long a task (one partition of the co-partitioned inputs) waits for an input partition
    # that has records on the broker but none fetched, before going ahead in time order without it.
    input_idle_ms: int = Field(default=500, ge=0)
    producer_linger_s: float = Field(default=0.005, ge=0)
    # How long a record may take to be acknowledged, retries included (Kafka's delivery.timeout.ms
    # default). Retriable refusals (a leader election, a broker restart) are retried within it;
    # past it the record has failed for good and the worker commits nothing more (kafka.py).
    kafka_delivery_timeout_s: float = Field(default=120.0, gt=0)
    # Faust table store: rocksdb:// keeps state on disk (fast restarts); memory:// replays the
    # whole changelog at every start.
    table_store: Literal["rocksdb://", "memory://"] = "rocksdb://"

    # Consumer-group membership: a killed worker is only evicted after the session timeout.
    kafka_session_timeout_s: float = Field(default=10.0, gt=0)
    kafka_heartbeat_interval_s: float = Field(default=2.0, gt=0)
    kafka_rebalance_timeout_s: float = Field(default=20.0, gt=0)
    kafka_request_timeout_s: float = Field(default=30.0, gt=0)
    kafka_commit_interval_s: float = Field(default=1.0, gt=0)
    # How old the consumer's metadata may get. A topic whose metadata is briefly unavailable
    # while a broker restarts is left out of the group's assignment, and only a refresh that
    # finds it again triggers the rebalance that assigns it (Kafka's default is 5 minutes).
    kafka_metadata_max_age_s: float = Field(default=5.0, gt=0)

    # Per-call timeouts of every dependency check and query.
    postgres_timeout_s: float = Field(default=2.0, gt=0)
    redis_timeout_s: float = Field(default=1.0, gt=0)
    kafka_timeout_s: float = Field(default=3.0, gt=0)
    # The longest a statement of the worker's pool waits for a row lock (PostgreSQL's
    # lock_timeout): a write whose Idempotency-Key another request holds gets 409 past it.
    postgres_lock_timeout_s: float = Field(default=0.2, gt=0)
    postgres_pool_min: int = Field(default=0, ge=0)
    postgres_pool_max: int = Field(default=10, ge=1)

    # Tracing (streams/tracing.py): an OTLP endpoint in OTEL_EXPORTER_OTLP_ENDPOINT selects
    # OTLP; otherwise `console`, `none`, or `file` (JSON lines in `trace_file`, for tests).
    # Sampling is ParentBased(TraceIdRatioBased(trace_sample_ratio)).
    trace_exporter: Literal["none", "console", "file"] = "none"
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    trace_file: Path | None = None

    # Local table state (RocksDB); each worker on a machine needs its own.
    data_dir: Path | None = None
    migrations_dir: Path = Field(default=REPO_ROOT / "migrations")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def worker_data_dir(self) -> Path:
        return self.data_dir or REPO_ROOT / ".local" / f"worker-{self.web_port}"

    @property
    def canonical_url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"

    @property
    def kafka_broker_urls(self) -> list[str]:
        # atlas-kafka:// selects the commit-safe transport (streams/kafka.py).
        servers = self.kafka_bootstrap_servers.split(",")
        return [f"atlas-kafka://{s.strip()}" for s in servers if s.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
