"""Soak: the live flow under a steady real-time load for a long time, sampled every few seconds.

`plantpulse sim` produces `rate` readings/s of `machines` machines in real time (event time = wall clock,
faults on so that incidents open) into the embedded tansu broker (or KAFKA_BOOTSTRAP_SERVERS), while
`plantpulse run` (its own process, recovery on) reads it. Every `every_s` seconds the bench records:

- the flow's event-time lag (gauge `plantpulse_event_time_lag_seconds`: wall clock minus the newest closed
  window's end) and its consumer lag in messages (`plantpulse_kafka_lag`, summed over partitions);
- readings accepted per second (from `plantpulse_readings_accepted_total`);
- RSS and CPU of the flow, the broker and the simulator, and the recovery store's size on disk;
- incident latency: a consumer in this process tails the `incidents` topic (INCIDENTS_TOPIC); for every
  `opened` record, its receive time minus `first_seen_ts` (the event time of the reading that completed the
  condition, which in real-time mode is about when that reading was produced). Until the topic exists the
  tail keeps looking for it, and the run reports "no incidents seen".

`--consumer-only` replaces the flow by plain assign-only consumers, one per partition, with the flow's fetch
settings, that decode nothing: it measures what the broker alone sustains (the lag is then the newest consumed
message's timestamp against the wall clock).

    python -m bench.soak --minutes 10                 # standalone: series in bench/results/soak/
    python -m bench.run --only soak --soak-minutes 30  # as a `make bench` section (latest.json + README)

The full series goes to `bench/results/soak/<UTC time>-<commit>[-consumer-only].csv` and its summary (per-minute
medians and maxima, incident latencies: `summarise`) beside it as .json; `bench.run` puts the summary in latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.results_file import RESULTS, ROOT, git_state, utc_now

SOAK_RESULTS = RESULTS / "soak"
WORK = ROOT / "bench" / "data" / "soak"
PARTITIONS = 8
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_START_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 60.0  # a clean stop writes every sink and snapshots once more
# Columns of the series file, in order; a column a mode does not measure stays empty.
COLUMNS = (
    "t_s", "event_time_lag_s", "consumer_lag_msgs", "accepted_per_s", "received_per_s",
    "flow_rss_mb", "flow_cpu_pct", "broker_rss_mb", "broker_cpu_pct", "sim_cpu_pct", "store_mb",
    "incidents_opened", "incident_latency_p50_s", "incident_latency_max_s", "load_1m",
)
# Columns the summary keeps as their median and maximum (incident latencies are summarised from every opening).
SUMMARISED = tuple(c for c in COLUMNS if c not in ("t_s",) and not c.startswith("incident"))


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 30.0
    rate: int = 20_000
    machines: int = 5_000
    every_s: float = 10.0
    faults: str = "all"  # overheating and pressure leaks open threshold incidents; the rest exercise the models
    fault_rate: float = 0.05
    seed: int = 1
    consumer_only: bool = False
    tree: str | None = None  # run the flow and the simulator of another checkout (e.g. a `git archive` of HEAD)


@dataclass
class Recording:
    """What a run has measured so far: filled as it goes, so a run that fails or is interrupted keeps it."""

    samples: list[dict] = field(default_factory=list)  # one row of COLUMNS per sample
    openings: list[tuple[float, float, str]] = field(default_factory=list)  # (t_s of the sample, latency s, kind)
    ended_early: str | None = None  # why the run stopped before its time (the flow or the simulator died)
    incident_tail_error: str | None = None


# ---- processes --------------------------------------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (a Bytewax run may fork workers)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids += _tree(int(child))
    return pids


def _cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime
    return 0.0


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class ProcessMeter:
    """RSS and CPU share (percent of one core, since the previous reading) of a process and its children."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._last = (time.monotonic(), self._cpu())

    def _cpu(self) -> float:
        return sum(map(_cpu_seconds, _tree(self.pid))) if self.pid else 0.0

    def read(self) -> tuple[float | None, float | None]:
        if self.pid is None:
            return None, None
        now, cpu = time.monotonic(), self._cpu()
        (then, before), self._last = self._last, (now, cpu)
        share = 100 * (cpu - before) / (now - then) if now > then else 0.0
        return round(sum(map(_rss_mb, _tree(self.pid))), 1), round(share, 1)


def _stop(process: subprocess.Popen, timeout_s: float = _STOP_TIMEOUT_S) -> None:
    """SIGINT to the process group (a clean stop for `plantpulse run`), SIGKILL if it does not end in time."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def _started(command: list[str], env: dict, log: Path, cwd: Path = ROOT) -> Iterator[subprocess.Popen]:
    """A child process, always stopped on the way out."""
    from connectors.broker import _death_signal_preexec  # the broker's own guard, for our children too

    with log.open("wb") as out:
        # Own process group (a terminal's Ctrl-C reaches only us; we stop the child cleanly), and killed by the
        # kernel if we die without cleaning up (as the embedded broker is).
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_death_signal_preexec())
    try:
        yield process
    finally:
        _stop(process)


@contextlib.contextmanager
def _kafka(work: Path) -> Iterator[tuple[str, int | None]]:
    """(bootstrap servers, broker pid): KAFKA_BOOTSTRAP_SERVERS when set, else an embedded broker of our own."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external, None
        return
    from connectors.broker import EmbeddedBroker

    with EmbeddedBroker(log_dir=work) as broker:
        yield broker.bootstrap, broker.pid


def scrape(port: int) -> dict[str, float]:
    """The flow's Prometheus metrics, labelled series summed per name; {} while the endpoint does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    metrics: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            base = name.split("{", 1)[0]
            metrics[base] = metrics.get(base, 0.0) + float(value)
    return metrics


def _wait_for_metrics(port: int, flow: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not scrape(port):
        if flow.poll() is not None:
            raise RuntimeError(f"soak: the flow exited at startup (code {flow.returncode}): {_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"soak: no metrics from the flow within {_START_TIMEOUT_S:g} s: {_tail(log)}")
        time.sleep(0.2)


def _tail(log: Path, size: int = 2000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else "(no log)"


# ---- readers in this process ------------------------------------------------------------------------------

class IncidentTail(threading.Thread):
    """Tails the incidents topic from its start; for every `opened` record: (receive wall s, latency s, kind).

    The topic is looked for every few seconds (listing all topics: tansu creates a topic that a metadata
    request names), so the soak runs, and says "no incidents seen", before the flow publishes incidents.
    Records older than the soak (`at` before it started: an external cluster's old topic) are skipped.
    """

    def __init__(self, kafka_config: dict, topic: str, since_ms: int) -> None:
        super().__init__(name="incident-tail", daemon=True)
        self._config, self._topic, self._since_ms = kafka_config, topic, since_ms
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._opened: list[tuple[float, float, str]] = []
        self.error: str | None = None

    def run(self) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer({**self._config, "group.id": "plantpulse-soak", "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100})
        try:
            partitions = self._wait_for_topic(consumer)
            if partitions:
                self._tail(consumer, partitions)
        except Exception as exc:  # noqa: BLE001 - a broken tail must not end the soak: it reports why it stopped
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            consumer.close()

    def _wait_for_topic(self, consumer) -> list[int]:
        while not self._stopping.is_set():
            topic = consumer.list_topics(timeout=10).topics.get(self._topic)
            if topic is not None and topic.error is None and topic.partitions:
                return sorted(topic.partitions)
            self._stopping.wait(5.0)
        return []

    def _tail(self, consumer, partitions: list[int]) -> None:
        from confluent_kafka import TopicPartition

        # Offset 0 rather than OFFSET_BEGINNING: the same on a fresh topic, without tansu's slow offset lookup.
        consumer.assign([TopicPartition(self._topic, p, 0) for p in partitions])
        while not self._stopping.is_set():
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    self._record(message.value(), time.time())

    def _record(self, value: bytes | None, received_s: float) -> None:
        try:
            record = json.loads(value or b"")
        except ValueError:
            return
        if record.get("transition") != "opened" or record.get("at", 0) < self._since_ms:
            return
        latency_s = received_s - record["first_seen_ts"] / 1000.0
        with self._lock:
            self._opened.append((received_s, latency_s, str(record.get("kind", ""))))

    def take(self) -> list[tuple[float, float, str]]:
        """The openings seen since the previous call."""
        with self._lock:
            taken, self._opened = self._opened, []
        return taken

    def stop(self) -> None:
        self._stopping.set()
        self.join(15)


class PlainReaders(threading.Thread):
    """`--consumer-only`: one assign-only consumer per partition with the flow's fetch settings, decoding
    nothing; tracks the position, the newest message timestamp (producer time) and the consumed count."""

    def __init__(self, settings, topic: str, partitions: int) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from connectors.kafka import _consumer_config  # the flow source's own settings, on purpose

        super().__init__(name="plain-readers", daemon=True)
        self._topic = topic
        self._consumers = []
        for p in range(partitions):
            consumer = Consumer(_consumer_config(settings, f"soak-reader-{p}", None))
            consumer.assign([TopicPartition(topic, p, 0)])
            self._consumers.append(consumer)
        self._next = [0] * partitions
        self.newest_ms = 0
        self.consumed = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            got = sum(self._poll(p, consumer) for p, consumer in enumerate(self._consumers))
            if not got:
                self._stopping.wait(0.05)

    def _poll(self, partition: int, consumer) -> int:
        messages = [m for m in consumer.consume(10_000, 0) if m.error() is None]
        if messages:
            self.consumed += len(messages)
            self._next[partition] = messages[-1].offset() + 1
            self.newest_ms = max(self.newest_ms, messages[-1].timestamp()[1])
        return len(messages)

    def lag(self) -> int:
        from confluent_kafka import TopicPartition

        total = 0
        for p, consumer in enumerate(self._consumers):
            # Cached watermarks come from fetch responses (tansu's ListOffsets answer is wrong).
            _low, high = consumer.get_watermark_offsets(TopicPartition(self._topic, p), cached=True)
            total += max(0, high - self._next[p]) if high >= 0 else 0
        return total

    def stop(self) -> None:
        self._stopping.set()
        self.join(15)
        for consumer in self._consumers:
            consumer.close()


# ---- sampling -----------------------------------------------------------------------------------------------

class Sampler:
    """One row of the series per call: the flow's (or the plain readers') figures, processes, store, incidents."""

    def __init__(self, *, port: int | None, readers: PlainReaders | None, meters: dict[str, ProcessMeter],
                 store: Path, incidents: IncidentTail, recording: Recording) -> None:
        self._port, self._readers, self._meters = port, readers, meters
        self._store, self._incidents, self._recording = store, incidents, recording
        self._started = self._last = time.monotonic()
        self._counts: dict[str, float] = {}

    def sample(self) -> dict:
        now = time.monotonic()
        row: dict = {"t_s": round(now - self._started, 1)}
        row |= self._readers_row(now) if self._readers is not None else self._flow_row(now)
        for name, meter in self._meters.items():
            rss, cpu = meter.read()
            if name != "sim":
                row[f"{name}_rss_mb"] = rss
            row[f"{name}_cpu_pct"] = cpu
        row["store_mb"] = round(_bytes_on_disk(self._store) / 1e6, 1) if self._store.exists() else None
        # The machine is shared: a load well above what we run says the figures of that minute are disturbed.
        row["load_1m"] = round(os.getloadavg()[0], 2)
        opened = self._incidents.take()
        self._recording.openings += [(row["t_s"], latency, kind) for _received, latency, kind in opened]
        row |= _incident_figures([latency for _received, latency, _kind in opened])
        self._last = now
        return row

    def _rate(self, name: str, total: float, now: float) -> int:
        before, self._counts[name] = self._counts.get(name, 0.0), total
        return round((total - before) / max(now - self._last, 1e-6))

    def _flow_row(self, now: float) -> dict:
        metrics = scrape(self._port) if self._port else {}
        lag = metrics.get("plantpulse_event_time_lag_seconds")
        return {
            "event_time_lag_s": round(lag, 2) if lag else None,  # 0 until the first window closes
            "consumer_lag_msgs": int(metrics.get("plantpulse_kafka_lag", 0)),
            "accepted_per_s": self._rate("accepted", metrics.get("plantpulse_readings_accepted_total", 0.0), now),
            "received_per_s": self._rate("received", metrics.get("plantpulse_readings_received_total", 0.0), now),
        }

    def _readers_row(self, now: float) -> dict:
        readers = self._readers
        newest = readers.newest_ms
        return {
            "event_time_lag_s": round(time.time() - newest / 1000.0, 2) if newest else None,
            "consumer_lag_msgs": readers.lag(),
            "received_per_s": self._rate("received", readers.consumed, now),
        }


def _bytes_on_disk(store: Path) -> int:
    from bench.recovery_store import bytes_on_disk

    return bytes_on_disk(store)


def _incident_figures(latencies: list[float]) -> dict:
    if not latencies:
        return {"incidents_opened": 0}
    return {"incidents_opened": len(latencies), "incident_latency_p50_s": round(statistics.median(latencies), 2),
            "incident_latency_max_s": round(max(latencies), 2)}


# ---- the run ------------------------------------------------------------------------------------------------

def _env(bootstrap: str, work: Path, port: int, tree: str | None) -> dict:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATA_DIR": str(work),
           "RECOVERY_DIR": str(work / "recovery"), "METRICS_PORT": str(port),
           "TOPIC_PARTITIONS": str(PARTITIONS), "LOG_LEVEL": "WARNING"}
    return env | {"PYTHONPATH": tree} if tree else env


def _sim_command(config: SoakConfig) -> list[str]:
    return [sys.executable, "-m", "plantpulse.cli", "sim", "--machines", str(config.machines),
            "--rate", str(config.rate), "--duration", str(config.minutes * 60), "--seed", str(config.seed),
            "--faults", config.faults, "--fault-rate", str(config.fault_rate)]


def measure(config: SoakConfig, recording: Recording, work: Path = WORK, echo: bool = True) -> None:
    """Runs the soak, filling `recording` as it goes."""
    from connectors.broker import free_port
    from connectors.topics import ensure_topics
    from plantpulse.settings import Settings

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        bootstrap, broker_pid = stack.enter_context(_kafka(work))
        settings = Settings(kafka_bootstrap_servers=bootstrap, data_dir=work, topic_partitions=PARTITIONS)
        ensure_topics(settings)
        port = free_port()
        env = _env(bootstrap, work, port, config.tree)
        cwd = Path(config.tree) if config.tree else ROOT
        meters = {"broker": ProcessMeter(broker_pid)}
        readers = None
        if config.consumer_only:
            readers = PlainReaders(settings, settings.telemetry_topic, PARTITIONS)
            stack.callback(readers.stop)
            readers.start()
        else:
            flow = stack.enter_context(_started([sys.executable, "-m", "plantpulse.cli", "run"], env,
                                                work / "flow.log", cwd))
            _wait_for_metrics(port, flow, work / "flow.log")
            meters["flow"] = ProcessMeter(flow.pid)
        incidents_topic = getattr(settings, "incidents_topic", "incidents")  # INCIDENTS_TOPIC, once it exists
        tail = IncidentTail(settings.kafka_config(), incidents_topic, since_ms=int(time.time() * 1000))
        stack.callback(tail.stop)
        tail.start()
        sim = stack.enter_context(_started(_sim_command(config), env, work / "sim.log", cwd))
        meters["sim"] = ProcessMeter(sim.pid)
        sampler = Sampler(port=None if readers else port, readers=readers, meters=meters,
                          store=work / "recovery", incidents=tail, recording=recording)
        _sample_until_done(sampler, recording, config, sim, None if readers else flow, work, echo)
    recording.incident_tail_error = tail.error


def _sample_until_done(sampler: Sampler, recording: Recording, config: SoakConfig, sim: subprocess.Popen,
                       flow: subprocess.Popen | None, work: Path, echo: bool) -> None:
    """Samples every `every_s` until the run's time is up or a process it measures dies (then it says why:
    the series up to that point is a result too, e.g. memory growing until the flow is killed)."""
    started = time.monotonic()
    end = started + config.minutes * 60
    next_at = started + config.every_s
    while time.monotonic() < end:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += config.every_s
        recording.samples.append(sampler.sample())
        if echo:
            print(json.dumps(recording.samples[-1]), flush=True)
        t_s = recording.samples[-1]["t_s"]
        if flow is not None and flow.poll() is not None:
            recording.ended_early = f"the flow exited (code {flow.returncode}) after {t_s} s"
        elif sim.poll() is not None and sim.returncode != 0:
            recording.ended_early = f"the simulator failed (code {sim.returncode}) after {t_s} s"
        if recording.ended_early:
            log = work / ("flow.log" if flow is not None and flow.poll() is not None else "sim.log")
            print(f"soak: {recording.ended_early}: {_tail(log)}", file=sys.stderr, flush=True)
            return


# ---- results ------------------------------------------------------------------------------------------------

def _stats(values: list) -> dict | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"median": round(statistics.median(present), 2), "max": round(max(present), 2)}


def _minute(t_s: float) -> int:
    """The minute (1, 2, ...) in which a sample taken `t_s` seconds into the run falls: t in (60(m-1), 60m]."""
    return max(1, math.ceil(t_s / 60))


def _block(rows: list[dict], latencies: list[float]) -> dict:
    """Median and maximum of every column over `rows`, and of the incident latencies seen meanwhile."""
    figures = {column: _stats([row.get(column) for row in rows]) for column in SUMMARISED}
    figures["incident_latency_s"] = _stats(latencies)
    return {"samples": len(rows), "incidents_opened": len(latencies),
            **{name: value for name, value in figures.items() if value is not None}}


def summarise(samples: list[dict], openings: list[tuple[float, float, str]], every_s: float) -> dict:
    """Per-minute medians and maxima of every column, the same over the whole run ("overall"), and the
    incident latencies: per minute from every opening (not from the per-sample figures), overall with
    percentiles and by incident kind."""
    rows_by_minute: dict[int, list[dict]] = {}
    for row in samples:
        rows_by_minute.setdefault(_minute(row["t_s"]), []).append(row)
    latencies_by_minute: dict[int, list[float]] = {}
    for t_s, latency, _kind in openings:
        latencies_by_minute.setdefault(_minute(t_s), []).append(latency)
    per_minute = [{"minute": m, **_block(rows, latencies_by_minute.get(m, []))}
                  for m, rows in sorted(rows_by_minute.items())]
    return {"sample_every_s": every_s, "per_minute": per_minute,
            "overall": _block(samples, [latency for _t, latency, _kind in openings]),
            "incidents": _incidents(openings)}


def _incidents(openings: list[tuple[float, float, str]]) -> dict:
    if not openings:
        return {"opened_seen": 0, "note": "no incidents seen"}
    latencies = sorted(latency for _t, latency, _kind in openings)

    def percentile(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, math.ceil(q * len(latencies)) - 1)], 2)

    kinds = sorted({kind for _t, _latency, kind in openings})
    return {
        "opened_seen": len(latencies),
        "latency_s": {"p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99),
                      "max": round(latencies[-1], 2)},
        "by_kind": {kind: {"opened_seen": sum(1 for o in openings if o[2] == kind),
                           **_stats([o[1] for o in openings if o[2] == kind])} for kind in kinds},
    }


def series_path(git: dict, consumer_only: bool, directory: Path = SOAK_RESULTS) -> Path:
    commit = (git.get("commit") or "unknown")[:7] + ("-dirty" if git.get("dirty") else "")
    suffix = "-consumer-only" if consumer_only else ""
    return directory / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{commit}{suffix}.csv"


def write_series(samples: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(samples)
    return path


def section(config: SoakConfig, recording: Recording, series: Path) -> dict:
    """The `soak` section of latest.json (bench.run adds the provenance)."""
    summary = summarise(recording.samples, recording.openings, config.every_s)
    if recording.incident_tail_error:
        summary["incidents"]["tail_error"] = recording.incident_tail_error
    return {
        "config": {**asdict(config), "partitions": PARTITIONS, "recovery": not config.consumer_only,
                   "broker": os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "embedded tansu (memory storage)"},
        "series_file": str(series.relative_to(ROOT)) if series.is_relative_to(ROOT) else str(series),
        **({"ended_early": recording.ended_early} if recording.ended_early else {}),
        **summary,
    }


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    sys.exit(143)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every process the soak started is stopped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_soak(config: SoakConfig, echo: bool = True, directory: Path = SOAK_RESULTS) -> dict:
    """Measure, write the series and its summary to `directory`, return the section (without provenance).

    A run that fails or is interrupted still writes what it measured (then the error goes on up, so bench.run
    records nothing in latest.json).
    """
    git = git_state()
    print(f"soak: {config.minutes:g} min at {config.rate:,} readings/s from {config.machines:,} machines"
          f"{' (consumer only)' if config.consumer_only else ''}; a row every {config.every_s:g} s", flush=True)
    recording = Recording()
    try:
        with _sigterm_unwinds():
            measure(config, recording, echo=echo)
    except BaseException as exc:
        if recording.samples:
            recording.ended_early = recording.ended_early or f"interrupted: {type(exc).__name__}"
            _write(config, recording, git, directory)
        raise
    return _write(config, recording, git, directory)


def _write(config: SoakConfig, recording: Recording, git: dict, directory: Path) -> dict:
    series = write_series(recording.samples, series_path(git, config.consumer_only, directory))
    result = section(config, recording, series)
    # The summary beside the series, with where it came from: a standalone run keeps its results too.
    summary = series.with_suffix(".json")
    summary.write_text(json.dumps({"date": utc_now(), **git, "command": shlex.join(["python", *sys.argv]),
                                   **result}, indent=2) + "\n")
    print(f"soak: series written to {series}, summary to {summary.name}", flush=True)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=SoakConfig.minutes)
    parser.add_argument("--rate", type=int, default=SoakConfig.rate, help="readings/s, in real time")
    parser.add_argument("--machines", type=int, default=SoakConfig.machines)
    parser.add_argument("--every", type=float, default=SoakConfig.every_s, help="seconds between samples")
    parser.add_argument("--faults", default=SoakConfig.faults, help="as `plantpulse sim --faults`")
    parser.add_argument("--fault-rate", type=float, default=SoakConfig.fault_rate)
    parser.add_argument("--consumer-only", action="store_true",
                        help="plain consumers instead of the flow: what the broker alone sustains")
    parser.add_argument("--tree", type=Path, help="run the flow and simulator of this checkout instead")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate < 1 or args.machines < 1 or args.every <= 0:
        parser.error("--minutes, --rate, --machines and --every must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = SoakConfig(minutes=args.minutes, rate=args.rate, machines=args.machines, every_s=args.every,
                        faults=args.faults, fault_rate=args.fault_rate, consumer_only=args.consumer_only,
                        tree=str(args.tree.resolve()) if args.tree else None)
    result = run_soak(config)
    print(json.dumps({k: result[k] for k in ("series_file", "incidents", "overall")}, indent=2))


if __name__ == "__main__":
    main()
