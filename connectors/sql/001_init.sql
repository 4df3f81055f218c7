-- PlantPulse schema, version 1: the tables the flow writes and the fleet metadata.
--
-- Applied by connectors.clickhouse_schema.apply_schema, which replaces {database} with the configured
-- database (quoted) and records the version in schema_migrations. Every statement is idempotent
-- (IF NOT EXISTS) so a start that crashed half-way through this file can simply run it again.
-- Never edit this file once released: add 00N_<name>.sql instead.
--
-- Why ReplacingMergeTree everywhere: the flow delivers at least once (a crash replays from the last
-- snapshot), so a row can arrive twice. Each table's ORDER BY is the row's identity, and the engine keeps
-- one row per identity (the highest version column) when parts merge; queries that must not see
-- duplicates before a merge read with FINAL.
--
-- non_replicated_deduplication_window: the sink sends an insert_deduplication_token per batch and reuses
-- it when it retries, so a batch that did land before a connection broke is not stored twice.
-- ingested_at: when the row became queryable (server clock), for end-to-end latency measurements.

CREATE DATABASE IF NOT EXISTS {database};

-- One row per (machine, tumbling window). Codecs: timestamps are near-regular within a machine
-- (DoubleDelta/Delta), sensor statistics change slowly along (machine_id, window_start) (Gorilla),
-- counts are small integers (T64); ZSTD on top of each.
CREATE TABLE IF NOT EXISTS {database}.window_stats
(
    machine_id          LowCardinality(String),
    machine_type        LowCardinality(String),
    window_start        DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    window_end          DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    readings            UInt32 CODEC(T64, ZSTD(1)),
    first_ts            DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    last_ts             DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    last_seq            Int64 CODEC(Delta, ZSTD(1)),
    temperature_count   UInt32 CODEC(T64, ZSTD(1)),
    temperature_mean    Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    temperature_min     Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    temperature_max     Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    temperature_std     Nullable(Float64) CODEC(ZSTD(1)),
    temperature_last    Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    pressure_count      UInt32 CODEC(T64, ZSTD(1)),
    pressure_mean       Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    pressure_min        Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    pressure_max        Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    pressure_std        Nullable(Float64) CODEC(ZSTD(1)),
    pressure_last       Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    vibration_count     UInt32 CODEC(T64, ZSTD(1)),
    vibration_mean      Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    vibration_min       Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    vibration_max       Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    vibration_std       Nullable(Float64) CODEC(ZSTD(1)),
    vibration_last      Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    rpm_count           UInt32 CODEC(T64, ZSTD(1)),
    rpm_mean            Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    rpm_min             Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    rpm_max             Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    rpm_std             Nullable(Float64) CODEC(ZSTD(1)),
    rpm_last            Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    power_count         UInt32 CODEC(T64, ZSTD(1)),
    power_mean          Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    power_min           Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    power_max           Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    power_std           Nullable(Float64) CODEC(ZSTD(1)),
    power_last          Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    status_last         LowCardinality(String),
    secs_running        Float64 CODEC(ZSTD(1)),
    secs_idle           Float64 CODEC(ZSTD(1)),
    secs_stopped        Float64 CODEC(ZSTD(1)),
    secs_maintenance    Float64 CODEC(ZSTD(1)),
    secs_fault          Float64 CODEC(ZSTD(1)),
    emitted_at          DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1)),
    -- Lets the hourly rollup's refresh find recently ingested rows without scanning old parts.
    INDEX ingested_at_minmax ingested_at TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree(emitted_at)
PARTITION BY toYYYYMMDD(window_start)
ORDER BY (machine_id, window_start)
TTL toDateTime(window_start) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

-- One row per raised alert; alert_id is derived from (machine, rule, window), the same identity as the key.
CREATE TABLE IF NOT EXISTS {database}.alerts
(
    alert_id        String CODEC(ZSTD(1)),
    machine_id      LowCardinality(String),
    machine_type    LowCardinality(String),
    rule_id         LowCardinality(String),
    kind            LowCardinality(String),
    severity        LowCardinality(String),
    sensor          LowCardinality(String),
    window_start    DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    window_end      DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    value           Float64 CODEC(ZSTD(1)),
    threshold       Float64 CODEC(ZSTD(1)),
    duration_s      Float64 CODEC(ZSTD(1)),
    message         String CODEC(ZSTD(3)),
    raised_at       DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(raised_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (machine_id, rule_id, window_start)
TTL toDateTime(window_start) + INTERVAL 1 YEAR
SETTINGS non_replicated_deduplication_window = 1000;

-- Latest state per machine. The version is updated_at, not last_ts: a "stale" marker repeats the
-- machine's last reading (same last_ts) with a later updated_at and must win over the "ok" row, and a
-- fresh reading after that gets a later updated_at again. Read it with FINAL.
CREATE TABLE IF NOT EXISTS {database}.machine_state
(
    machine_id      LowCardinality(String),
    machine_type    LowCardinality(String),
    last_ts         DateTime64(3, 'UTC'),
    last_seq        Int64,
    temperature     Nullable(Float64),
    pressure        Nullable(Float64),
    vibration       Nullable(Float64),
    rpm             Nullable(Float64),
    power           Nullable(Float64),
    status          LowCardinality(String),
    state           LowCardinality(String),
    updated_at      DateTime64(3, 'UTC'),
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY machine_id
SETTINGS non_replicated_deduplication_window = 1000;

-- Fleet metadata loaded from machines.csv; reloading the file replaces rows (newest loaded_at wins).
CREATE TABLE IF NOT EXISTS {database}.machines
(
    machine_id      String,
    site            LowCardinality(String),
    line            LowCardinality(String),
    machine_type    LowCardinality(String),
    loaded_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY machine_id;
