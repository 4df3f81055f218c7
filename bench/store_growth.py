"""How the recovery store grows under a steady live load: `plantpulse run` (recovery on, default settings)
reading `plantpulse sim` at a fixed rate through the embedded broker, the store's size sampled as it runs.

    python -m bench.store_growth [--seconds 300] [--rate 20000] [--machines 2000] [--tree PATH]

`--tree` runs the flow from another checkout of the project (e.g. a `git worktree` of an older commit), with
this tree's simulator and broker, so that two versions are compared on the same load and day. Writes
`bench/results/store_growth-<label>.json` with the date, commit and command (the label is `--label`, by
default `current`, or the tree's directory name).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.recovery_store import bytes_on_disk
from bench.results_file import RESULTS, ROOT, git_state, utc_now
from connectors.broker import EmbeddedBroker, free_port
from connectors.topics import ensure_topics
from plantpulse.settings import Settings


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return {}
    pairs = (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))
    return {name: float(value) for name, value in pairs}


def measure(seconds: float, rate: float, machines: int, tree: Path, sample_s: float = 30.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="store-growth-") as scratch, EmbeddedBroker() as broker:
        data = Path(scratch)
        settings = Settings(kafka_bootstrap_servers=broker.bootstrap, data_dir=data)
        ensure_topics(settings)
        port = free_port()
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "DATA_DIR": str(data),
               "RECOVERY_DIR": str(data / "recovery"), "METRICS_PORT": str(port)}
        flow_env = {**env, "PYTHONPATH": str(tree)}
        sim = subprocess.Popen([sys.executable, "-m", "plantpulse.cli", "sim", "--machines", str(machines), "--rate",
                                str(rate), "--duration", str(seconds), "--seed", "1"], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        log = (data / "run.log").open("wb")
        flow = subprocess.Popen([sys.executable, "-m", "plantpulse.cli", "run"], env=flow_env, cwd=tree, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        samples = []
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds:
                time.sleep(sample_s)
                if flow.poll() is not None:
                    raise RuntimeError(f"store_growth: the flow exited early: {(data / 'run.log').read_text()[-1500:]}")
                metrics = _scrape(port)
                samples.append({
                    "seconds": round(time.monotonic() - started, 1),
                    "store_bytes": bytes_on_disk(data / "recovery"),
                    "readings_received": int(metrics.get("plantpulse_readings_received_total", 0)),
                })
                print(json.dumps(samples[-1]), flush=True)
        finally:
            for process in (sim, flow):
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in (sim, flow):
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        return {"rate": rate, "machines": machines, "seconds": seconds, "samples": samples,
                "final_store_bytes": samples[-1]["store_bytes"] if samples else None,
                "peak_store_bytes": max((s["store_bytes"] for s in samples), default=None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--rate", type=float, default=20_000.0)
    parser.add_argument("--machines", type=int, default=2_000)
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose flow runs (default: this one)")
    parser.add_argument("--label", default=None)
    args = parser.parse_args()
    tree = args.tree.resolve()
    label = args.label or ("current" if tree == ROOT else tree.name)
    result = measure(args.seconds, args.rate, args.machines, tree)
    result["provenance"] = {"date": utc_now(), **git_state(tree),
                            "command": shlex.join(["python", "-m", "bench.store_growth", *sys.argv[1:]])}
    out = RESULTS / f"store_growth-{label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}: store {result['final_store_bytes']:,} bytes after {args.seconds:.0f} s at {args.rate:,.0f}/s")


if __name__ == "__main__":
    main()
