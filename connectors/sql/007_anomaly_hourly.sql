-- PlantPulse schema, version 7: the anomaly scores' hourly rollup, so that fleet-wide risk panels over days or
-- weeks read one row per machine and hour instead of one per 10-s window (dashboards: fleet.risk_heatmap,
-- fleet.top_risk). Built like window_stats_hourly (002): a refreshable view recomputes the (machine, hour) groups
-- that received scores since its previous run, each entirely from `anomaly_scores FINAL`, and appends them to a
-- ReplacingMergeTree whose version is the computation time. Query `anomaly_scores_hourly`.
--
-- max_risk: the hour's highest score / threshold over scored windows (NULL while the model was warming up);
-- scored: windows past warm-up; anomalies / alerts: windows over the threshold / that raised an alert.

-- Lets the refresh find recently ingested scores without reading old parts (parts written from now on).
ALTER TABLE {database}.anomaly_scores ADD INDEX IF NOT EXISTS ingested_at_minmax ingested_at TYPE minmax GRANULARITY 1;

CREATE TABLE IF NOT EXISTS {database}.anomaly_scores_hourly_store
(
    machine_id      LowCardinality(String),
    machine_type    LowCardinality(String),
    hour            DateTime('UTC'),
    windows         UInt32,
    scored          UInt32,
    max_score       Float64,
    max_risk        Nullable(Float64),
    anomalies       UInt32,
    alerts          UInt32,
    computed_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(hour)
ORDER BY (machine_id, hour)
TTL hour + INTERVAL 2 YEAR;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.anomaly_scores_hourly_refresh
REFRESH EVERY 1 MINUTE APPEND TO {database}.anomaly_scores_hourly_store
AS
WITH
    (SELECT max(computed_at) FROM {database}.anomaly_scores_hourly_store) - INTERVAL 10 MINUTE AS since,
    touched AS (
        SELECT DISTINCT machine_id, toStartOfHour(window_start) AS hour
        FROM {database}.anomaly_scores WHERE ingested_at >= since
    )
SELECT
    s.machine_id AS machine_id,
    argMax(s.machine_type, s.window_start) AS machine_type,
    toStartOfHour(s.window_start) AS hour,
    toUInt32(count()) AS windows,
    toUInt32(countIf(NOT s.warming_up)) AS scored,
    max(s.score) AS max_score,
    if(countIf(NOT s.warming_up AND s.threshold > 0) = 0, NULL,
       maxIf(s.score / s.threshold, NOT s.warming_up AND s.threshold > 0)) AS max_risk,
    toUInt32(countIf(s.is_anomaly)) AS anomalies,
    toUInt32(countIf(s.alert_raised)) AS alerts,
    now64(3, 'UTC') AS computed_at
FROM {database}.anomaly_scores AS s FINAL
-- The first two conditions only narrow what is read (primary key and daily partitions); the last one decides.
WHERE s.machine_id IN (SELECT machine_id FROM touched)
  AND s.window_start >= (SELECT min(hour) FROM touched)
  AND (s.machine_id, toStartOfHour(s.window_start)) IN (SELECT machine_id, hour FROM touched)
GROUP BY machine_id, hour;

CREATE VIEW IF NOT EXISTS {database}.anomaly_scores_hourly
AS
SELECT * EXCEPT (computed_at)
FROM {database}.anomaly_scores_hourly_store FINAL;
