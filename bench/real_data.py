"""Anomaly models on real labelled machine data: SKAB and NAB, replayed as `plantpulse replay` does.

    python -m bench.real_data                         # both data sets, into bench/results/real_data.json
    python -m bench.run --only real-data              # the same as a `make bench` section

The data sets live beside the project, in `../shared/datasets/` (or `$PLANTPULSE_DATASETS`); they are never
copied into the repository. Without them the section is skipped with a one-line message.

- **SKAB** (`skab/valve2` + `skab/other`: 18 experiment files of one pump rig at 1 Hz, 8 channels): each file
  is one machine; the benchmark protocol scores every reading after a file's first 400 point-wise, pooled
  over the files (F1, false-alarm rate FAR, missed-alarm rate MAR; `models.benchmark_scores.skab_score`).
- **NAB** `ambient_temperature_system_failure` (one hourly temperature, 2 labelled windows): NAB's standard
  profile raw score for the file (`models.benchmark_scores.nab_score`).

Each runs through the replay's own code (`connectors.replay_sources.open_input`, `flows.replay.replay`, the
default window length), with the packaged model spec (`plantpulse/config/models.toml`, `[default]`: no
per-file or per-data-set setting) and, for comparison, variants of it (`VARIANTS`). The commands that give
the same figures one by one are in `reproduce`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from connectors.replay_sources import ReplayInput, open_input
from flows.pipeline import PipelineConfig
from flows.replay import replay
from models.benchmark_scores import nab_score, skab_score
from models.spec import load_model_specs
from plantpulse.settings import PACKAGED_MODELS_FILE, Settings

RESULTS = Path(__file__).parent / "results" / "real_data.json"
DEFAULT_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SKAB_FOLDERS = ("skab/valve2", "skab/other")
NAB_FILE = "nab/ambient_temperature_system_failure.csv"
# Spec overrides measured beside the packaged spec: what the multivariate detector adds over a univariate one.
# Each changes one setting: how sensitive the figures are to it (the tuning was on these same files).
VARIANTS: dict[str, dict[str, str]] = {
    "packaged": {},
    "univariate robust z-score instead of multivariate": {"default.detector": "robust_zscore"},
    "a lasting state relearned after 90 windows (the physics' value)": {"default.alert.relearn_after_windows": "90"},
    "relearned after 30 windows": {"default.alert.relearn_after_windows": "30"},
    "threshold floor 4": {"default.threshold.floor": "4"},
    "threshold floor 5": {"default.threshold.floor": "5"},
    "faster forgetting (alpha 0.01)": {"default.multivariate.alpha": "0.01"},
    "warm-up windows over the threshold not learned": {"default.alert.learn_in_warmup": "false"},
    "mean, spread and step features per channel": {"default.channel_features": '["mean", "spread", "step"]'},
}


def datasets_dir() -> Path:
    return Path(os.environ.get("PLANTPULSE_DATASETS", DEFAULT_DATASETS))


def reproduce(kind: str, datasets: Path, overrides: dict[str, str]) -> str:
    """The `plantpulse replay` command that gives the same figure (paths relative to the repository)."""
    shown = Path(os.path.relpath(datasets, Path(__file__).resolve().parents[1]))
    sources = " ".join(str(shown / folder) for folder in SKAB_FOLDERS) if kind == "skab" else str(shown / NAB_FILE)
    grid = (" --grid " + " ".join(f"{k}={v}" for k, v in overrides.items())) if overrides else ""
    return f"plantpulse replay {sources} --scoring {kind} --out replay-{kind}{grid}"


def _replay(data: ReplayInput, overrides: dict[str, str]) -> tuple[object, float]:
    settings = Settings()
    base = PipelineConfig.from_settings(settings.model_copy(update={"machines_file": None}))
    specs = load_model_specs(PACKAGED_MODELS_FILE).with_overrides(overrides)
    config = replace(base, machine_types=data.machine_types or base.machine_types, models=specs,
                     limits=replace(base.limits, max_event_age_ms=0))
    started = time.perf_counter()
    result = replay(data.items, config, raw=data.raw)
    return result, time.perf_counter() - started


def measure_skab(datasets: Path, overrides: dict[str, str]) -> dict:
    data = open_input([str(datasets / folder) for folder in SKAB_FOLDERS])
    if data.points is None:
        raise ValueError(f"real_data: SKAB under {datasets} has no labelled readings")
    result, seconds = _replay(data, overrides)
    summary = skab_score(result.scores, data.points).summary()  # type: ignore[attr-defined]
    per_file = next((v for v in summary.values() if isinstance(v, list)), [])
    by_folder = {}
    for folder in SKAB_FOLDERS:  # machine ids are "<folder>_<file>": the folders scored apart, same run
        prefix = Path(folder).name + "_"
        rows = [r for r in per_file if str(r["machine_id"]).startswith(prefix)]
        tp, fp, fn, tn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn", "tn"))
        by_folder[Path(folder).name] = {"files": len(rows), "f1": round(2 * tp / (2 * tp + fp + fn), 4) if tp else 0.0,
                                        "far": round(fp / (fp + tn), 4) if fp + tn else None,
                                        "mar": round(fn / (fn + tp), 4) if fn + tp else None}
    return {"files": len({m for m in data.points["machine_id"].to_pylist()}), "readings": data.readings,
            "seconds": round(seconds, 2), **{k: v for k, v in summary.items() if not isinstance(v, list)},
            "per_file": per_file, "by_folder": by_folder,
            "reproduce": reproduce("skab", datasets, overrides)}


def measure_nab(datasets: Path, overrides: dict[str, str]) -> dict:
    data = open_input(str(datasets / NAB_FILE))
    if data.points is None or data.labels is None:
        raise ValueError(f"real_data: {datasets / NAB_FILE} needs its .windows.json beside it")
    result, seconds = _replay(data, overrides)
    scores = result.scores  # type: ignore[attr-defined]
    summary = nab_score(scores, data.points, data.labels).summary()
    return {"readings": data.readings, "seconds": round(seconds, 2), **summary,
            **score_separation(scores, data.labels, summary.get("probation_rows", {})),
            "reproduce": reproduce("nab", datasets, overrides)}


def score_separation(scores: pa.Table, windows: pa.Table, probation_rows: dict[str, int]) -> dict:
    """The highest score inside each labelled window, and outside all of them after the probation: whether any
    threshold could tell the windows from healthy stretches. One machine (the NAB file)."""
    start = scores["window_start"].cast(pa.int64()).to_numpy()
    order = np.argsort(start, kind="stable")
    start, score = start[order], np.asarray(scores["score"].to_numpy(zero_copy_only=False))[order]
    scored = np.arange(len(start)) >= sum(probation_rows.values())
    inside = np.zeros(len(start), dtype=bool)
    per_window = []
    for lo, hi in zip(_epoch_ms(windows["start_ts"]), _epoch_ms(windows["end_ts"])):
        mine = (start >= lo) & (start <= hi)
        inside |= mine
        per_window.append(round(float(score[mine].max()), 2) if mine.any() else None)
    outside = scored & ~inside
    return {"max_score_in_windows": per_window,
            "max_score_outside_windows": round(float(score[outside].max()), 2) if outside.any() else None}


def _epoch_ms(column: pa.ChunkedArray) -> list[int]:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("ms", "UTC")).cast(pa.int64())
    return [int(v) for v in column.to_pylist()]


def measure(datasets: Path | None = None) -> dict:
    """Every variant on both data sets; {"skipped": reason} when the data sets are absent."""
    datasets = datasets or datasets_dir()
    if not (datasets / SKAB_FOLDERS[0]).is_dir() or not (datasets / NAB_FILE).is_file():
        reason = f"real-data: skipped, no data sets at {datasets} (set PLANTPULSE_DATASETS; see bench/real_data.py)"
        print(reason, flush=True)
        return {"skipped": reason}
    out: dict = {"datasets": str(datasets), "spec": str(PACKAGED_MODELS_FILE.name), "variants": {}}
    for name, overrides in VARIANTS.items():
        out["variants"][name] = {"overrides": overrides, "skab": measure_skab(datasets, overrides),
                                 "nab": measure_nab(datasets, overrides)}
        skab, nab = out["variants"][name]["skab"], out["variants"][name]["nab"]
        print(f"real-data {name}: SKAB F1 {skab.get('f1')} FAR {skab.get('far')} MAR {skab.get('mar')}; "
              f"NAB raw {nab.get('raw_score')}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=None, help="default: $PLANTPULSE_DATASETS or ../shared/datasets")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = measure(args.datasets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
