"""All PlantPulse configuration, read from environment variables when `Settings()` is built.

Every process (demo, flow, simulator, tests, containers, k8s) reads the same variables; the README's
configuration table lists them with their defaults. Nothing is read at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGED_RULES_FILE = Path(__file__).with_name("config") / "rules.toml"
PACKAGED_MODELS_FILE = Path(__file__).with_name("config") / "models.toml"


class Settings(BaseSettings):
    """Process configuration. Field names are the environment variable names (case-insensitive)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    data_dir: Path = Field(Path(".plantpulse"), description="Local working directory for embedded defaults.")

    # Kafka
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_mechanism: str | None = Field(None, description="SASL mechanism, e.g. SCRAM-SHA-512.")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = Field(None, description="CA bundle for TLS.")
    kafka_ssl_certificate_location: str | None = Field(None, description="Client certificate (PEM), mutual TLS.")
    kafka_ssl_key_location: str | None = Field(None, description="Client private key (PEM), mutual TLS.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of that key, if encrypted.")
    telemetry_topic: str = "telemetry"
    alerts_topic: str = "alerts"
    deadletter_topic: str = "telemetry-deadletter"
    incidents_topic: str = Field("incidents", description="Incident transitions (keyed by machine), JSON.")
    incident_commands_topic: str = Field(
        "incident-commands", description="Operator actions (ack, resolve, comment) the flow applies to its incidents."
    )
    topic_partitions: int = Field(
        8, ge=1, description="Partitions when PlantPulse creates a topic; at least the flow's total workers."
    )
    topic_replication_factor: int = Field(
        -1, ge=-1, description="Replicas per partition when PlantPulse creates a topic; -1: the broker's default."
    )
    telemetry_retention_hours: float = Field(168.0, gt=0, description="Retention of the telemetry topic.")
    alerts_retention_hours: float = Field(720.0, gt=0, description="Retention of the alerts topic.")
    deadletter_retention_hours: float = Field(336.0, gt=0, description="Retention of the dead-letter topic.")
    incidents_retention_hours: float = Field(2160.0, gt=0, description="Retention of the incidents topic.")
    incident_commands_retention_hours: float = Field(
        720.0, gt=0, description="Retention of the incident-commands topic."
    )
    notify_deadletter_retention_hours: float = Field(
        720.0, gt=0, description="Retention of the notifier's dead-letter topic."
    )
    kafka_create_topics: bool = Field(
        False, description="`plantpulse run` creates missing topics (as `plantpulse topics ensure`) instead of failing."
    )
    kafka_batch_size: int = Field(10_000, ge=1, description="Max messages pulled per partition per poll.")

    # ClickHouse
    clickhouse_url: str = Field("", description="chdb:///abs/path (embedded) or http(s)://host:8123.")
    clickhouse_database: str = "plantpulse"
    clickhouse_user: str | None = None
    clickhouse_password: SecretStr | None = None
    clickhouse_verify: bool = Field(True, description="Verify an https server's certificate (and host name).")
    clickhouse_ca_file: Path | None = Field(None, description="CA bundle for an https ClickHouse (private CA).")
    clickhouse_flush_seconds: float = Field(1.0, gt=0, description="Max age of buffered rows before insert.")
    clickhouse_refresh_seconds: int = Field(
        60, ge=1, description="How often the refreshable rollups (the hourly ones, data_quality) recompute."
    )
    clickhouse_max_buffer_rows: int = Field(
        200_000, ge=1, description="Rows buffered per sink before the flow is held back (backpressure)."
    )
    clickhouse_sink_partitions: int = Field(
        1, ge=1, description="Parallel ClickHouse writers; must be 1 with embedded chDB (one process per dir)."
    )

    # Lake
    lake_url: str = Field("", description="file:///path or s3://bucket/prefix for raw Parquet.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO); credentials: AWS_*.")
    s3_ca_bundle: Path | None = Field(None, description="CA bundle for an https S3 endpoint (private CA).")
    s3_sse: str | None = Field(None, description="Server-side encryption: AES256 or a KMS key id.")
    lake_file_max_rows: int = Field(
        250_000, ge=1, description="A lake file is written once an hour's buffered rows reach this (at a snapshot)."
    )
    lake_file_max_bytes: int = Field(
        64 * 2**20, ge=1, description="... or its buffered rows reach this many bytes (Arrow, uncompressed)."
    )
    lake_file_max_age_seconds: float = Field(
        120.0, ge=0, description="... or its oldest buffered row waited this long; 0 writes at every snapshot."
    )

    # Recovery
    recovery_dir: Path | None = Field(None, description="Bytewax recovery store; recovery is off when unset.")
    snapshot_interval_seconds: float = Field(10.0, gt=0)
    recovery_partitions: int = Field(4, ge=1, description="Partitions when a new recovery store is created.")

    # Windows and state
    window_seconds: int = Field(10, ge=1, description="Tumbling window length (event time).")
    allowed_lateness_seconds: float = Field(1.0, ge=0, description="How long a window waits for stragglers.")
    idle_close_seconds: float = Field(
        15.0, gt=0, description="Wall-clock silence after which a machine's open windows are closed."
    )
    stale_after_seconds: float = Field(30.0, gt=0, description="Silence after which a machine is 'stale'.")
    dedup_seq_window: int = Field(
        1024, ge=16, description="Duplicates are recognised among each machine's last N sequence numbers."
    )
    state_shards: int = Field(32, ge=1, description="Keyed-state shards (fixed for a recovery store).")

    # Validation
    max_payload_bytes: int = Field(4096, ge=64)
    max_future_skew_seconds: float = Field(300.0, ge=0)
    max_event_age_seconds: float = Field(7 * 86400.0, ge=0, description="0 disables the too-old check.")
    # Dead letters and their quarantine copies: a message of any size must not stop the flow. The Kafka
    # bound stays well under librdkafka's message.max.bytes (1,000,000); the lake keeps far more.
    deadletter_max_value_bytes: int = Field(
        262_144, ge=1024, description="Dead-letter records keep this many bytes of the original (+ size, SHA-256)."
    )
    quarantine_max_value_bytes: int = Field(
        16 * 2**20, ge=1024, description="The lake quarantine keeps originals whole up to this size, then a prefix."
    )

    # Device identity: every reading is signed by its device (README "Security model").
    device_auth: str = Field(
        "required", description="'required': readings need a valid device signature; 'off' accepts them unsigned."
    )
    device_keys_file: Path | None = Field(
        None, description="Device key registry (JSON, mode 0600); default $DATA_DIR/device-keys.json."
    )
    device_keys_reload_seconds: float = Field(
        5.0, gt=0, description="How often the flow looks for a changed key registry (rotation without restart)."
    )

    # Incidents
    incident_resolve_after_windows: int = Field(
        6, ge=1, description="Quiet windows after which an incident resolves (a rule or model spec may override)."
    )

    # Rules and fleet metadata
    rules_file: Path = PACKAGED_RULES_FILE
    models_file: Path = Field(PACKAGED_MODELS_FILE, description="Anomaly model specs per machine type (TOML).")
    machines_file: Path | None = Field(None, description="CSV machine_id,site,line,machine_type.")

    # Bytewax cluster (multi-process). Explicit BYTEWAX_PROCESS_ID/BYTEWAX_ADDRESSES win; in a StatefulSet
    # the process id comes from the pod ordinal and the addresses from the headless service.
    bytewax_process_id: int | None = None
    bytewax_addresses: str | None = Field(None, description="'host:port;host:port', one per process.")
    bytewax_workers_per_process: int = Field(1, ge=1)
    bytewax_pod_name: str | None = None
    bytewax_statefulset_name: str | None = None
    bytewax_service_name: str | None = None
    bytewax_replicas: int | None = Field(None, ge=1)
    bytewax_port: int = 2101

    # Notifications (`plantpulse notify`). URLs and credentials never live in the routing file: it names the
    # environment variables (webhook/Slack URLs) and the SMTP server comes from the SMTP_* variables below.
    notify_routes_file: Path = Field(
        Path(__file__).with_name("config") / "notify.toml", description="Routing file: channels and routes (TOML)."
    )
    notify_ledger_path: Path | None = Field(
        None, description="SQLite delivery ledger (dedup + consumed offsets); default $DATA_DIR/notify/ledger.sqlite."
    )
    notify_deadletter_topic: str = Field(
        "incidents-notify-deadletter", description="Notifications that could not be delivered, with the last error."
    )
    notify_max_attempts: int = Field(8, ge=1, description="Attempts per delivery before it is dead-lettered.")
    notify_backoff_initial_seconds: float = Field(1.0, gt=0, description="First pause between delivery attempts.")
    notify_backoff_max_seconds: float = Field(60.0, gt=0, description="Longest pause between delivery attempts.")
    notify_http_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one webhook/Slack request.")
    notify_http_ca_file: Path | None = Field(
        None, description="CA bundle for https webhook/Slack endpoints (private CA); the system CAs otherwise."
    )
    notify_metrics_port: int = Field(9465, ge=0, description="Prometheus port of `plantpulse notify`; 0 disables.")
    smtp_host: str | None = Field(None, description="SMTP server for e-mail channels.")
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str | None = Field(None, description="SMTP login; no AUTH when unset.")
    smtp_password: SecretStr | None = None
    smtp_from: str | None = Field(None, description="From address of notification e-mails.")
    smtp_starttls: bool = Field(True, description="Upgrade the SMTP connection with STARTTLS (certificate verified).")
    smtp_ca_file: Path | None = Field(None, description="CA bundle for the SMTP server's certificate (private CA).")
    smtp_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one SMTP conversation step.")

    # Observability
    metrics_port: int = Field(
        9464, ge=0, description="Prometheus metrics port; 0 disables (give each local process its own)."
    )
    ready_max_poll_age_seconds: float = Field(
        30.0, gt=0, description="`GET /ready` of the flow answers 503 when its Kafka source polled longer ago."
    )
    log_level: str = "INFO"

    @field_validator("kafka_security_protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        allowed = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
        if value.upper() not in allowed:
            raise ValueError(f"KAFKA_SECURITY_PROTOCOL={value!r}: expected one of {sorted(allowed)}")
        return value.upper()

    @field_validator("topic_replication_factor")
    @classmethod
    def _replication(cls, value: int) -> int:
        if value == 0:
            raise ValueError("TOPIC_REPLICATION_FACTOR=0: give >= 1, or -1 for the broker's default")
        return value

    @field_validator("device_auth")
    @classmethod
    def _known_device_auth(cls, value: str) -> str:
        if value.lower() not in {"required", "off"}:
            raise ValueError(f"DEVICE_AUTH={value!r}: expected 'required' or 'off'")
        return value.lower()

    def model_post_init(self, __context: Any) -> None:
        # Defaults that depend on DATA_DIR are resolved here so one variable moves all local state.
        data_dir = self.data_dir.resolve()
        if not self.clickhouse_url:
            object.__setattr__(self, "clickhouse_url", f"chdb://{data_dir / 'chdb'}")
        if not self.lake_url:
            object.__setattr__(self, "lake_url", f"file://{data_dir / 'lake'}")
        if self.machines_file is None:
            object.__setattr__(self, "machines_file", data_dir / "machines.csv")
        if self.device_keys_file is None:
            object.__setattr__(self, "device_keys_file", data_dir / "device-keys.json")

    def cluster(self) -> tuple[int | None, list[str] | None]:
        """(process id, addresses) of this Bytewax process, or (None, None) when running alone."""
        process_id, addresses = self.bytewax_process_id, self.bytewax_addresses
        if process_id is None and self.bytewax_pod_name and self.bytewax_statefulset_name:
            ordinal = self.bytewax_pod_name.removeprefix(self.bytewax_statefulset_name + "-")
            if not ordinal.isdigit():
                raise ValueError(
                    f"BYTEWAX_POD_NAME={self.bytewax_pod_name!r} is not '<BYTEWAX_STATEFULSET_NAME>-<ordinal>'"
                )
            process_id = int(ordinal)
        if addresses is None and process_id is not None and self.bytewax_replicas and self.bytewax_service_name:
            addresses = ";".join(
                f"{self.bytewax_statefulset_name}-{i}.{self.bytewax_service_name}:{self.bytewax_port}"
                for i in range(self.bytewax_replicas)
            )
        if (process_id is None) != (addresses is None):
            raise ValueError("BYTEWAX_PROCESS_ID and BYTEWAX_ADDRESSES go together (or the StatefulSet variables)")
        return process_id, addresses.split(";") if addresses else None

    @property
    def clickhouse_is_embedded(self) -> bool:
        return self.clickhouse_url.startswith("chdb:")

    def kafka_config(self) -> dict[str, str | int]:
        """librdkafka client properties shared by producers, consumers and admin clients."""
        config: dict[str, str | int] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
            # librdkafka would print every failed connection attempt to stderr; errors still surface as
            # exceptions and delivery reports, which our code turns into one clear message.
            "log_level": 2,
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            config["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_location:
            config["ssl.ca.location"] = self.kafka_ssl_ca_location
        if self.kafka_ssl_certificate_location:
            config["ssl.certificate.location"] = self.kafka_ssl_certificate_location
        if self.kafka_ssl_key_location:
            config["ssl.key.location"] = self.kafka_ssl_key_location
        if self.kafka_ssl_key_password is not None:
            config["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        return config
