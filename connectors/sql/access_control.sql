-- PlantPulse access control for a ClickHouse *server*: roles, users, settings profiles and quotas.
--
-- Not a numbered migration (the migration loader only reads NNN_name.sql): the embedded chDB has no user
-- directories, so this file is applied only by connectors.clickhouse_access.apply_access, after the schema,
-- by an administrator account (one with access_management). `{database}` is replaced by the quoted database
-- name; `{<user>_password:String}` are query parameters sent next to the statement (never spliced into its
-- text), taken at apply time from CLICKHOUSE_<USER>_PASSWORD. Every statement is idempotent, so the file is
-- applied again on every deployment; the ALTER USER statements set the current passwords (rotation = apply
-- again with new values).
--
-- Who may do what (least privilege; no role has ALTER, DROP, TRUNCATE or CREATE on data, nor SYSTEM, nor
-- access management):
--   ingest   - the flow: INSERT into the tables it writes (connectors.clickhouse_sink.TABLE_SCHEMAS and the
--              fleet metadata), SELECT on schema_migrations (to see the schema is current) and the refresh
--              interval of the three rollup views (connectors.clickhouse_schema.set_refresh_interval).
--   grafana  - SELECT on the tables and views the dashboards and alert rules read, nothing else.
--   analyst  - SELECT on every table of the database.
--   operator - read incidents and alerts, INSERT acknowledgements into incident_acknowledgements only.
-- grafana and analyst run under read-only settings profiles whose limits they cannot raise (MAX
-- constraints), and under hourly quotas.

CREATE ROLE IF NOT EXISTS plantpulse_ingest;
CREATE ROLE IF NOT EXISTS plantpulse_dashboard;
CREATE ROLE IF NOT EXISTS plantpulse_analyst;
CREATE ROLE IF NOT EXISTS plantpulse_operator;

-- Operators acknowledge incidents here. A table of its own (not incident_events) because the flow owns the
-- incident audit trail: incident_events is keyed by (incident_id, version), and a row written there by anyone
-- else would replace the flow's row of the same version. The constraint makes the engine refuse anything
-- but an acknowledgement. The flow's incident state still follows the incident-commands topic (`plantpulse
-- alerts ack`); this table is the record for SQL clients on a server deployment.
CREATE TABLE IF NOT EXISTS {database}.incident_acknowledgements
(
    incident_id     String,
    action          LowCardinality(String) DEFAULT 'acknowledge',
    acknowledged_by String,
    note            String DEFAULT '',
    at              DateTime64(3, 'UTC') DEFAULT now64(3),
    recorded_by     LowCardinality(String) DEFAULT currentUser(),
    CONSTRAINT acknowledgements_only CHECK action = 'acknowledge',
    CONSTRAINT names_the_incident CHECK length(incident_id) > 0 AND length(acknowledged_by) > 0
)
ENGINE = MergeTree
ORDER BY (incident_id, at);

-- ingest: the flow.
GRANT INSERT ON {database}.window_stats TO plantpulse_ingest;
GRANT INSERT ON {database}.alerts TO plantpulse_ingest;
GRANT INSERT ON {database}.machine_state TO plantpulse_ingest;
GRANT INSERT ON {database}.anomaly_scores TO plantpulse_ingest;
GRANT INSERT ON {database}.incidents TO plantpulse_ingest;
GRANT INSERT ON {database}.incident_events TO plantpulse_ingest;
GRANT INSERT ON {database}.reading_issues TO plantpulse_ingest;
GRANT INSERT ON {database}.machines TO plantpulse_ingest;
GRANT SELECT ON {database}.schema_migrations TO plantpulse_ingest;
GRANT ALTER VIEW MODIFY REFRESH ON {database}.window_stats_hourly_refresh TO plantpulse_ingest;
GRANT ALTER VIEW MODIFY REFRESH ON {database}.data_quality_refresh TO plantpulse_ingest;
GRANT ALTER VIEW MODIFY REFRESH ON {database}.anomaly_scores_hourly_refresh TO plantpulse_ingest;

-- grafana: what the dashboards and alert rules read (grafana/queries*.py). The rollup views are SQL SECURITY
-- INVOKER (ClickHouse's default for plain views), so their stores are granted too.
GRANT SELECT ON {database}.window_stats TO plantpulse_dashboard;
GRANT SELECT ON {database}.window_stats_hourly TO plantpulse_dashboard;
GRANT SELECT ON {database}.window_stats_hourly_store TO plantpulse_dashboard;
GRANT SELECT ON {database}.anomaly_scores TO plantpulse_dashboard;
GRANT SELECT ON {database}.anomaly_scores_hourly TO plantpulse_dashboard;
GRANT SELECT ON {database}.anomaly_scores_hourly_store TO plantpulse_dashboard;
GRANT SELECT ON {database}.data_quality TO plantpulse_dashboard;
GRANT SELECT ON {database}.data_quality_store TO plantpulse_dashboard;
GRANT SELECT ON {database}.incidents TO plantpulse_dashboard;
GRANT SELECT ON {database}.machine_state TO plantpulse_dashboard;
GRANT SELECT ON {database}.machines TO plantpulse_dashboard;
GRANT SELECT ON {database}.reading_issues TO plantpulse_dashboard;

-- analyst: the whole database, read-only.
GRANT SELECT ON {database}.* TO plantpulse_analyst;

-- operator: see what to acknowledge, record acknowledgements.
GRANT SELECT ON {database}.incidents TO plantpulse_operator;
GRANT SELECT ON {database}.incident_events TO plantpulse_operator;
GRANT SELECT ON {database}.alerts TO plantpulse_operator;
GRANT SELECT ON {database}.machines TO plantpulse_operator;
GRANT SELECT ON {database}.machine_state TO plantpulse_operator;
GRANT SELECT ON {database}.incident_acknowledgements TO plantpulse_operator;
GRANT INSERT ON {database}.incident_acknowledgements TO plantpulse_operator;

-- Read-only profiles. readonly = 2 (not 1) because Grafana's ClickHouse plugin sends settings with its
-- queries; the MAX constraints keep those settings from raising the limits.
CREATE SETTINGS PROFILE IF NOT EXISTS plantpulse_dashboard_profile SETTINGS
    readonly = 2 CONST,
    max_execution_time = 60 MAX 60,
    max_result_rows = 1000000 MAX 1000000,
    result_overflow_mode = 'throw' CONST,
    max_memory_usage = 4000000000 MAX 4000000000;
CREATE SETTINGS PROFILE IF NOT EXISTS plantpulse_analyst_profile SETTINGS
    readonly = 2 CONST,
    max_execution_time = 600 MAX 600,
    max_result_rows = 10000000 MAX 10000000,
    result_overflow_mode = 'throw' CONST,
    max_memory_usage = 8000000000 MAX 8000000000;
CREATE SETTINGS PROFILE IF NOT EXISTS plantpulse_operator_profile SETTINGS
    max_execution_time = 30 MAX 30,
    max_result_rows = 100000 MAX 100000,
    result_overflow_mode = 'throw' CONST,
    max_memory_usage = 1000000000 MAX 1000000000;

CREATE QUOTA IF NOT EXISTS plantpulse_dashboard_quota KEYED BY user_name
    FOR INTERVAL 1 hour MAX queries = 100000, execution_time = 36000, result_rows = 1000000000;
CREATE QUOTA IF NOT EXISTS plantpulse_analyst_quota KEYED BY user_name
    FOR INTERVAL 1 hour MAX queries = 2000, execution_time = 7200, read_rows = 100000000000;
CREATE QUOTA IF NOT EXISTS plantpulse_operator_quota KEYED BY user_name
    FOR INTERVAL 1 hour MAX queries = 5000, execution_time = 600;

-- Users: created once, their passwords set on every apply (ALTER USER), their role the only one they hold.
CREATE USER IF NOT EXISTS ingest IDENTIFIED WITH sha256_password BY {ingest_password:String};
ALTER USER ingest IDENTIFIED WITH sha256_password BY {ingest_password:String};
GRANT plantpulse_ingest TO ingest;
ALTER USER ingest DEFAULT ROLE plantpulse_ingest;

CREATE USER IF NOT EXISTS grafana IDENTIFIED WITH sha256_password BY {grafana_password:String};
ALTER USER grafana IDENTIFIED WITH sha256_password BY {grafana_password:String};
GRANT plantpulse_dashboard TO grafana;
ALTER USER grafana DEFAULT ROLE plantpulse_dashboard SETTINGS PROFILE 'plantpulse_dashboard_profile';
ALTER QUOTA plantpulse_dashboard_quota TO grafana;

CREATE USER IF NOT EXISTS analyst IDENTIFIED WITH sha256_password BY {analyst_password:String};
ALTER USER analyst IDENTIFIED WITH sha256_password BY {analyst_password:String};
GRANT plantpulse_analyst TO analyst;
ALTER USER analyst DEFAULT ROLE plantpulse_analyst SETTINGS PROFILE 'plantpulse_analyst_profile';
ALTER QUOTA plantpulse_analyst_quota TO analyst;

CREATE USER IF NOT EXISTS operator IDENTIFIED WITH sha256_password BY {operator_password:String};
ALTER USER operator IDENTIFIED WITH sha256_password BY {operator_password:String};
GRANT plantpulse_operator TO operator;
ALTER USER operator DEFAULT ROLE plantpulse_operator SETTINGS PROFILE 'plantpulse_operator_profile';
ALTER QUOTA plantpulse_operator_quota TO operator
