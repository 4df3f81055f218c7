-- PlantPulse schema, version 4: machine_state counts each machine's sequence counter restarts.
-- A device whose seq restarts (a reboot, a firmware update) begins a new sequence epoch in the flow instead
-- of having its readings dropped as duplicates (flows/sequence_epochs.py); seq_resets is the machine's
-- cumulative count of such resets. Rows written before this column existed read 0.
-- Placed after updated_at, before ingested_at: the columns then follow MACHINE_STATE_ARROW_SCHEMA's order.

ALTER TABLE {database}.machine_state ADD COLUMN IF NOT EXISTS seq_resets UInt32 DEFAULT 0 AFTER updated_at;
