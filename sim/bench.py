"""Throughput of the simulator: `python -m sim.bench --machines 10000 --count 2000000 [--bootstrap HOST:PORT]`.

Prints messages per wall second and per CPU second of this process for: generation only, `record_only`
(Parquet), and, with `--bootstrap`, `produce` to Kafka without and with a recording. CPU seconds include
the background Parquet writer and librdkafka's threads; on a shared machine they are the steadier figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sim.fleet import build_fleet
from sim.producer import produce, record_only
from sim.simulator import Simulator

_IMPERFECTIONS = {"duplicates": 0.001, "out_of_order": 0.001, "late": 0.0005, "malformed": 0.001, "clock_skew": 0.01}


def _measure(name: str, count: int, work: Callable[[], int]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    messages = work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rates = f"{messages / wall:>11,.0f} msg/s  {messages / cpu:>11,.0f} msg/CPU-s"
    print(f"{name:<18} {messages:>10,} msgs  {rates}  {wall:6.2f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--count", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers; produce benchmarks are skipped without it")
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args(argv)
    sim = Simulator(build_fleet(args.machines, args.seed), seed=args.seed, imperfections=_IMPERFECTIONS)
    fixed = sim.retimed(start_ts_ms=int(time.time() * 1000) - 86_400_000)
    ticks = -(-args.count // args.machines)
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "bench.parquet"
        _measure("generate", args.count, lambda: sum(len(batch) for batch in fixed.run(ticks)))
        _measure("record_only", args.count, lambda: record_only(sim, count=args.count, path=record).messages)
        if args.bootstrap:
            from plantpulse.settings import Settings

            def to_kafka(path: Path | None) -> int:
                topic = f"sim-bench-{uuid.uuid4().hex[:8]}"
                settings = Settings(
                    kafka_bootstrap_servers=args.bootstrap, telemetry_topic=topic, topic_partitions=args.partitions
                )
                return produce(settings, sim, count=args.count, record_path=path).messages

            _measure("produce", args.count, lambda: to_kafka(None))
            _measure("produce + record", args.count, lambda: to_kafka(record))


if __name__ == "__main__":
    main()
