-- PlantPulse schema, version 3: the online anomaly models' verdict on every scored (machine, window).
-- One row per (machine, window), replaced on replay like window_stats (ReplacingMergeTree on scored_at;
-- read with FINAL). Anomaly alerts themselves go to the alerts table (kind = 'anomaly').

CREATE TABLE IF NOT EXISTS {database}.anomaly_scores
(
    machine_id      LowCardinality(String),
    machine_type    LowCardinality(String),
    window_start    DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    window_end      DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    model           LowCardinality(String),
    detector        LowCardinality(String),
    score           Float64 CODEC(Gorilla, ZSTD(1)),
    threshold       Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    warming_up      Bool,
    is_anomaly      Bool,
    alert_raised    Bool,
    top_features    String CODEC(ZSTD(1)),
    scored_at       DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMMDD(window_start)
ORDER BY (machine_id, window_start)
SETTINGS non_replicated_deduplication_window = 1000;
