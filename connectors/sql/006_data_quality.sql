-- PlantPulse schema, version 6: data quality, per machine and hour (seed requirement "completeness: expected vs
-- actual message counts").
--
-- reading_issues: one row per message the flow did not accept as a reading (a dead letter of any reason,
-- `late`, `duplicate`) and per reading that began a new sequence epoch (`seq_reset`). The row's identity is
-- where the message was read (topic, partition, offset) and why, so a replay after a crash replaces its twin:
-- read it with FINAL. machine_id is '' and ts/seq NULL when the message did not yield them (e.g. not JSON).
-- `hour` is the event hour, except for messages whose event time is missing or was itself the problem
-- (ts_future, ts_too_old): those count in the hour they were detected.
CREATE TABLE IF NOT EXISTS {database}.reading_issues
(
    machine_id      LowCardinality(String),
    reason          LowCardinality(String),
    ts              Nullable(DateTime64(3, 'UTC')),
    seq             Nullable(Int64),
    topic           LowCardinality(String),
    partition       Int32,
    offset          Int64,
    detected_at     DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    hour            DateTime('UTC') MATERIALIZED toStartOfHour(
                        if(ts IS NULL OR reason IN ('ts_future', 'ts_too_old'), detected_at, assumeNotNull(ts))),
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1)),
    INDEX ingested_at_minmax ingested_at TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree(detected_at)
PARTITION BY toYYYYMM(detected_at)
ORDER BY (topic, partition, offset, reason)
TTL toDateTime(detected_at) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- The seq of each window's first reading (by ts), next to last_seq: with it the readings a machine *sent*
-- can be counted from its sequence numbers, gaps between windows included. Windows written before this
-- column existed read first_seq = last_seq, which counts them as complete.
ALTER TABLE {database}.window_stats ADD COLUMN IF NOT EXISTS first_seq Int64 DEFAULT last_seq AFTER last_seq;

-- Per machine and hour. Recomputed like the hourly rollup (see 002): a refreshable view recomputes the
-- (machine, hour) groups that received window rows or issue rows since its previous run, each group entirely
-- from `window_stats FINAL` and `reading_issues FINAL`, and appends them to a ReplacingMergeTree keyed by
-- (machine_id, hour) whose version is the computation time. Read the `data_quality` view.
--
-- expected_by_seq: the sequence numbers the machine used in the hour: per window the span first_seq..last_seq
--   (at least the readings it holds: a counter restart inside the window makes the span meaningless) plus the
--   numbers skipped since the machine's previous window, when its counter moved on (first_seq > previous
--   last_seq; a lower first_seq is a restart). Lost messages are the gaps.
-- reporting_interval_ms: the median, over the hour's gap-free windows, of (last_ts - first_ts) / (last_seq - first_seq).
-- expected_by_interval: the hour's covered time / that interval. It catches what sequence numbers cannot: a
--   device that stops sending without using up numbers (a silent dropout). Covered time: from the hour's start
--   (or the machine's first reading ever, in its first hour) to the hour's end once the fleet's newest closed
--   window has passed it (else to the machine's last reading plus one interval), both on the grid of the
--   machine's reporting times.
-- completeness = (readings + late) / greatest(expected_by_seq, expected_by_interval), at most 1: a late
--   reading did arrive, it only missed its window.
CREATE TABLE IF NOT EXISTS {database}.data_quality_store
(
    machine_id              LowCardinality(String),
    machine_type            LowCardinality(String),
    hour                    DateTime('UTC'),
    windows                 UInt32,
    readings                UInt64,
    late                    UInt64,
    duplicates              UInt64,
    dead_letters            UInt64,
    dead_letter_reasons     Map(String, UInt64),
    seq_resets              UInt64,
    expected_by_seq         UInt64,
    reporting_interval_ms   Nullable(Float64),
    expected_by_interval    UInt64,
    expected                UInt64,
    completeness            Float64,
    computed_at             DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(hour)
ORDER BY (machine_id, hour)
TTL hour + INTERVAL 2 YEAR;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.data_quality_refresh
REFRESH EVERY 1 MINUTE APPEND TO {database}.data_quality_store
AS
WITH
    (SELECT max(computed_at) FROM {database}.data_quality_store) - INTERVAL 10 MINUTE AS since,
    touched AS (
        SELECT DISTINCT machine_id, toStartOfHour(window_start) AS hour
        FROM {database}.window_stats WHERE ingested_at >= since
        UNION DISTINCT
        SELECT DISTINCT machine_id, hour
        FROM {database}.reading_issues WHERE ingested_at >= since AND machine_id != ''
    ),
    -- The touched hours' windows and, for the gap before an hour's first window, the previous hour's.
    windows AS (
        SELECT
            w.machine_id AS machine_id,
            w.machine_type AS machine_type,
            toStartOfHour(w.window_start) AS hour,
            w.window_end AS window_end,
            w.readings AS readings,
            w.first_ts AS first_ts,
            w.last_ts AS last_ts,
            w.first_seq AS first_seq,
            w.last_seq AS last_seq,
            lagInFrame(w.last_seq, 1, toInt64(-1)) OVER machine_order AS prev_last_seq,
            lagInFrame(toUInt8(1), 1, toUInt8(0)) OVER machine_order AS has_prev
        FROM {database}.window_stats AS w FINAL
        -- The first two conditions only narrow what is read (primary key and daily partitions); the last one decides.
        WHERE w.machine_id IN (SELECT machine_id FROM touched)
          AND w.window_start >= (SELECT min(hour) FROM touched) - INTERVAL 1 HOUR
          AND ((w.machine_id, toStartOfHour(w.window_start)) IN (SELECT machine_id, hour FROM touched)
               OR (w.machine_id, toStartOfHour(w.window_start) + INTERVAL 1 HOUR) IN (SELECT machine_id, hour FROM touched))
        WINDOW machine_order AS (PARTITION BY w.machine_id ORDER BY w.window_start
                                 ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
    ),
    fleet_watermark AS (SELECT max(window_end) FROM windows),
    earlier AS (SELECT machine_id, min(hour) AS first_hour FROM {database}.data_quality_store GROUP BY machine_id),
    per_window AS (
        SELECT
            *,
            greatest(toInt64(readings), if(last_seq >= first_seq, last_seq - first_seq + 1, 0))
                + if(has_prev = 1 AND first_seq > prev_last_seq, first_seq - prev_last_seq - 1, 0) AS seq_expected,
            if(last_seq > first_seq AND last_seq - first_seq + 1 = readings,
               toFloat64(toUnixTimestamp64Milli(last_ts) - toUnixTimestamp64Milli(first_ts)) / (last_seq - first_seq),
               NULL) AS interval_ms
        FROM windows
        WHERE (machine_id, hour) IN (SELECT machine_id, hour FROM touched)
    ),
    window_groups AS (
        SELECT
            machine_id,
            hour,
            argMax(machine_type, window_end) AS machine_type,
            toUInt32(count()) AS windows,
            sum(readings) AS readings,
            toUInt64(sum(seq_expected)) AS expected_by_seq,
            quantileExact(0.5)(interval_ms) AS reporting_interval_ms,
            -- Covered time, on the machine's grid of reporting times (anchored at its first reading of the hour),
            -- so that a tick 0.6 s after the hour's start is not counted as a second reading.
            toUnixTimestamp64Milli(min(first_ts)) AS anchor_ms,
            coalesce(reporting_interval_ms, 1.0) AS step_ms,
            -- A machine seen before this hour (a window in the previous hour, or an earlier hour computed) was
            -- expected from the hour's first tick; in its first hour, from its first reading.
            if(argMin(has_prev, window_end) = 1 OR (any(e.first_hour) > toDateTime(0) AND any(e.first_hour) < hour),
               anchor_ms - floor((anchor_ms - toUnixTimestamp(hour) * 1000) / step_ms) * step_ms,
               anchor_ms) AS covered_from_ms,
            -- To the hour's last tick once the fleet has moved past the hour; else to the last reading.
            if((SELECT * FROM fleet_watermark) >= hour + INTERVAL 1 HOUR,
               anchor_ms + ceil(((toUnixTimestamp(hour) + 3600) * 1000 - anchor_ms) / step_ms) * step_ms,
               toUnixTimestamp64Milli(max(last_ts)) + step_ms) AS covered_to_ms
        FROM per_window
        LEFT JOIN earlier AS e ON e.machine_id = per_window.machine_id
        GROUP BY machine_id, hour
    ),
    issue_groups AS (
        SELECT
            machine_id,
            hour,
            countIf(reason = 'late') AS late,
            countIf(reason = 'duplicate') AS duplicates,
            countIf(reason = 'seq_reset') AS seq_resets,
            countIf(reason NOT IN ('late', 'duplicate', 'seq_reset')) AS dead_letters,
            sumMapIf(map(reason, toUInt64(1)), reason NOT IN ('late', 'duplicate', 'seq_reset')) AS dead_letter_reasons
        FROM {database}.reading_issues FINAL
        WHERE detected_at >= (SELECT min(hour) FROM touched) - INTERVAL 1 DAY  -- partitions by detection month
          AND (machine_id, hour) IN (SELECT machine_id, hour FROM touched)
        GROUP BY machine_id, hour
    )
SELECT
    machine_id,
    w.machine_type AS machine_type,
    hour,
    w.windows AS windows,
    w.readings AS readings,
    i.late AS late,
    i.duplicates AS duplicates,
    i.dead_letters AS dead_letters,
    i.dead_letter_reasons AS dead_letter_reasons,
    i.seq_resets AS seq_resets,
    w.expected_by_seq AS expected_by_seq,
    w.reporting_interval_ms AS reporting_interval_ms,
    toUInt64(if(w.reporting_interval_ms > 0,
                greatest(0, round((w.covered_to_ms - w.covered_from_ms) / w.reporting_interval_ms)), 0)) AS expected_by_interval,
    greatest(expected_by_seq, expected_by_interval) AS expected,
    if(expected = 0, 1.0, least(1.0, (readings + late) / expected)) AS completeness,
    now64(3, 'UTC') AS computed_at
FROM window_groups AS w
FULL OUTER JOIN issue_groups AS i USING (machine_id, hour);

-- What the dashboards and analysts query: one row per (machine, hour), earlier computations collapsed.
CREATE VIEW IF NOT EXISTS {database}.data_quality
AS
SELECT * EXCEPT (computed_at)
FROM {database}.data_quality_store FINAL;
