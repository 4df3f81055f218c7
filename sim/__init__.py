"""PlantPulse fleet simulator: realistic machine telemetry with injected faults and transport imperfections.

Typical use::

    from sim import build_fleet, Simulator, produce, record_only
    sim = Simulator(build_fleet(1000, seed=7), seed=7, faults="all", fault_rate=0.05,
                    imperfections={"duplicates": 0.01, "malformed": 0.001})
    summary = produce(Settings(), sim, rate=5000, duration_s=60, record_path=Path("run.parquet"))
"""

from sim.faults import CRITICAL_FAULTS, FAULT_KINDS, FaultLabel, parse_faults
from sim.fleet import MACHINE_TYPES, Machine, build_fleet, read_fleet_csv, sync_fleet_csv, write_fleet_csv
from sim.imperfections import DEAD_LETTER_REASONS, IMPERFECTION_KINDS, MALFORMED_KINDS, parse_imperfections
from sim.producer import ProduceError, ProduceSummary, ensure_topic, produce, record_only
from sim.recording import LABELS_SCHEMA, RECORDING_SCHEMA
from sim.simulator import MessageBatch, MessageMeta, Simulator

__all__ = [
    "CRITICAL_FAULTS",
    "DEAD_LETTER_REASONS",
    "FAULT_KINDS",
    "IMPERFECTION_KINDS",
    "LABELS_SCHEMA",
    "MACHINE_TYPES",
    "MALFORMED_KINDS",
    "RECORDING_SCHEMA",
    "FaultLabel",
    "Machine",
    "MessageBatch",
    "MessageMeta",
    "ProduceError",
    "ProduceSummary",
    "Simulator",
    "build_fleet",
    "ensure_topic",
    "parse_faults",
    "parse_imperfections",
    "produce",
    "read_fleet_csv",
    "record_only",
    "sync_fleet_csv",
    "write_fleet_csv",
]
