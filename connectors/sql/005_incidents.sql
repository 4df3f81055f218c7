-- PlantPulse schema, version 5: alert incidents (flows/incidents.py).
-- incident_events: one row per transition (opened, escalated, acknowledged, commented, resolved), the audit
-- trail with who (actor), when (at) and why (note). Each row also carries the incident's whole state after
-- the transition. Keyed by (incident_id, version): a transition re-sent after a crash replaces its twin.
-- incidents: the same rows, one per incident after FINAL (the highest version): the current state.
-- Times to acknowledge / resolve: acknowledged_at - opened_at, resolved_at - opened_at (see the README).

CREATE TABLE IF NOT EXISTS {database}.incident_events
(
    incident_id         String,
    version             UInt32,
    event_id            String,
    transition          LowCardinality(String),
    status              LowCardinality(String),
    machine_id          LowCardinality(String),
    machine_type        LowCardinality(String),
    site                LowCardinality(String),
    rule_id             LowCardinality(String),
    kind                LowCardinality(String),
    severity            LowCardinality(String),
    sensor              LowCardinality(String),
    opened_window_start DateTime64(3, 'UTC'),
    first_seen_ts       DateTime64(3, 'UTC'),
    last_seen_ts        DateTime64(3, 'UTC'),
    detections          UInt32,
    peak_value          Float64,
    threshold           Float64,
    message             String CODEC(ZSTD(1)),
    opened_at           DateTime64(3, 'UTC'),
    acknowledged_by     Nullable(String),
    acknowledged_at     Nullable(DateTime64(3, 'UTC')),
    resolved_by         Nullable(String),
    resolved_at         Nullable(DateTime64(3, 'UTC')),
    resolved_reason     LowCardinality(Nullable(String)),
    actor               String,
    note                String CODEC(ZSTD(1)),
    at                  DateTime64(3, 'UTC'),
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(opened_window_start)
ORDER BY (incident_id, version)
SETTINGS non_replicated_deduplication_window = 1000;

-- The same columns as incident_events; only the engine and key differ.
CREATE TABLE IF NOT EXISTS {database}.incidents AS {database}.incident_events
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(opened_window_start)
ORDER BY incident_id
SETTINGS non_replicated_deduplication_window = 1000;
