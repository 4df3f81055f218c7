-- PlantPulse schema, version 2: the hourly rollup for analysts (per machine and hour).
--
-- Query it as {database}.window_stats_hourly (a view reading the store with FINAL).
--
-- Design. A plain incremental materialized view (triggered per insert into window_stats, summing into an
-- AggregatingMergeTree) would count a window twice when the flow re-delivers it after a crash: the copies
-- replace each other in window_stats only, never in the aggregate. So the rollup is a *refreshable*
-- materialized view (ClickHouse >= 24.10; chDB runs the refresh in the process that has the engine open)
-- that computes from `window_stats FINAL`, where a re-delivered window counts once.
--
-- Recomputing all of window_stats every minute would grow with the 90 days kept, so the refresh is
-- incremental: it recomputes only the (machine, hour) groups that received a window row since its previous
-- run, each group entirely from window_stats FINAL, and APPENDs the results to a ReplacingMergeTree keyed
-- by (machine_id, hour) whose version is the computation time - a recomputed group replaces the old row.
-- "Since its previous run" is max(computed_at) in the store minus 10 minutes of overlap, because a row's
-- ingested_at is stamped when its insert starts and an insert can commit after a refresh took its
-- snapshot; the overlap only makes a group be recomputed again, with the same result. An empty store gives
-- 1970 - 10 min, i.e. a full backfill. Rollup rows stay when their windows expire from window_stats
-- (90 days): such old groups get no new rows and are never recomputed.
--
-- A window is attributed to the hour its window_start falls in (with WINDOW_SECONDS dividing 3600 no
-- window crosses an hour). Averages are weighted by each window's reading count; *_avg/min/max are NULL
-- when the sensor reported nothing in that hour.

CREATE TABLE IF NOT EXISTS {database}.window_stats_hourly_store
(
    machine_id          LowCardinality(String),
    machine_type        LowCardinality(String),
    hour                DateTime('UTC'),
    windows             UInt32,
    readings            UInt64,
    temperature_count   UInt64,
    temperature_avg     Nullable(Float64),
    temperature_min     Nullable(Float64),
    temperature_max     Nullable(Float64),
    pressure_count      UInt64,
    pressure_avg        Nullable(Float64),
    pressure_min        Nullable(Float64),
    pressure_max        Nullable(Float64),
    vibration_count     UInt64,
    vibration_avg       Nullable(Float64),
    vibration_min       Nullable(Float64),
    vibration_max       Nullable(Float64),
    rpm_count           UInt64,
    rpm_avg             Nullable(Float64),
    rpm_min             Nullable(Float64),
    rpm_max             Nullable(Float64),
    power_count         UInt64,
    power_avg           Nullable(Float64),
    power_min           Nullable(Float64),
    power_max           Nullable(Float64),
    secs_running        Float64,
    secs_idle           Float64,
    secs_stopped        Float64,
    secs_maintenance    Float64,
    secs_fault          Float64,
    computed_at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(hour)
ORDER BY (machine_id, hour)
TTL hour + INTERVAL 2 YEAR;

-- Source columns are qualified (w.) because the output aliases reuse their names and ClickHouse
-- would otherwise resolve e.g. temperature_count inside sum(...) to the alias sum(temperature_count).
CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.window_stats_hourly_refresh
REFRESH EVERY 1 MINUTE APPEND TO {database}.window_stats_hourly_store
AS
WITH
    (SELECT max(computed_at) FROM {database}.window_stats_hourly_store) - INTERVAL 10 MINUTE AS since
SELECT
    w.machine_id AS machine_id,
    argMax(w.machine_type, w.window_start) AS machine_type,
    toStartOfHour(w.window_start) AS hour,
    toUInt32(count()) AS windows,
    sum(w.readings) AS readings,
    sum(w.temperature_count) AS temperature_count,
    sum(w.temperature_mean * w.temperature_count) / nullIf(sum(w.temperature_count), 0) AS temperature_avg,
    min(w.temperature_min) AS temperature_min,
    max(w.temperature_max) AS temperature_max,
    sum(w.pressure_count) AS pressure_count,
    sum(w.pressure_mean * w.pressure_count) / nullIf(sum(w.pressure_count), 0) AS pressure_avg,
    min(w.pressure_min) AS pressure_min,
    max(w.pressure_max) AS pressure_max,
    sum(w.vibration_count) AS vibration_count,
    sum(w.vibration_mean * w.vibration_count) / nullIf(sum(w.vibration_count), 0) AS vibration_avg,
    min(w.vibration_min) AS vibration_min,
    max(w.vibration_max) AS vibration_max,
    sum(w.rpm_count) AS rpm_count,
    sum(w.rpm_mean * w.rpm_count) / nullIf(sum(w.rpm_count), 0) AS rpm_avg,
    min(w.rpm_min) AS rpm_min,
    max(w.rpm_max) AS rpm_max,
    sum(w.power_count) AS power_count,
    sum(w.power_mean * w.power_count) / nullIf(sum(w.power_count), 0) AS power_avg,
    min(w.power_min) AS power_min,
    max(w.power_max) AS power_max,
    sum(w.secs_running) AS secs_running,
    sum(w.secs_idle) AS secs_idle,
    sum(w.secs_stopped) AS secs_stopped,
    sum(w.secs_maintenance) AS secs_maintenance,
    sum(w.secs_fault) AS secs_fault,
    now64(3, 'UTC') AS computed_at
FROM {database}.window_stats AS w FINAL
WHERE (w.machine_id, toStartOfHour(w.window_start)) IN (
    SELECT machine_id, toStartOfHour(window_start)
    FROM {database}.window_stats
    WHERE ingested_at >= since
)
GROUP BY machine_id, hour;

-- What analysts query: one row per (machine, hour), duplicates from earlier refreshes collapsed.
CREATE VIEW IF NOT EXISTS {database}.window_stats_hourly
AS
SELECT * EXCEPT (computed_at)
FROM {database}.window_stats_hourly_store FINAL;
