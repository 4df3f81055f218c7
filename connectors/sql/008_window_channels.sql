-- PlantPulse schema, version 8: window statistics of extra sensor channels (issue 15).
-- A reading may carry named channels beyond the five core sensors (`channels` on the wire, see
-- plantpulse/schema.py). Their per-window count, mean, min, max, std and last value are kept as maps keyed
-- by channel name, in the order of WINDOW_STATS_ARROW_SCHEMA (after emitted_at). Rows written before these
-- columns existed read empty maps. Analysts read one channel with e.g. channel_mean['volume_flow_raterms'].

ALTER TABLE {database}.window_stats ADD COLUMN IF NOT EXISTS channel_count Map(LowCardinality(String), UInt32) AFTER emitted_at;
ALTER TABLE {database}.window_stats ADD COLUMN IF NOT EXISTS channel_mean Map(LowCardinality(String), Float64) AFTER channel_count;
ALTER TABLE {database}.window_stats ADD COLUMN IF NOT EXISTS channel_min Map(LowCardinality(String), Float64) AFTER channel_mean;
ALTER TABLE {database}.window_stats ADD COLUMN IF NOT EXISTS channel_max Map(LowCardinality(String), Float64) AFTER channel_min;
ALTER TABLE {database}.window_stats ADD COLUMN IF NOT EXISTS channel_std Map(LowCardinality(String), Float64) AFTER channel_max;
ALTER TABLE {database}.window_stats ADD COLUMN IF NOT EXISTS channel_last Map(LowCardinality(String), Float64) AFTER channel_std;
