"""The spec variants behind the packaged anomaly spec, measured on the tuning seeds: `python -m bench.tuning`.

    python -m bench.tuning [--seeds 1 2 3]

The README's "two changes took bearing wear from 6 to 5 windows" table comes from here: each variant is the
packaged spec (`plantpulse/config/models.toml`) with a few keys overridden, scored by `bench.model_quality`
on the bearing-wear and fault-free streams of the tuning seeds (never the held-out seeds 101-103, which
the tuning must not see). Prints one JSON line (the last line of stdout); `python -m bench.run --only tuning`
stores it as `tuning` in `bench/results/latest.json`.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.model_quality import measure, summarise
from models.spec import load_model_specs
from plantpulse.settings import PACKAGED_MODELS_FILE

FAULT_MACHINES, FAULT_HOURS = 200, 1.0  # the fault runs of bench.model_quality's defaults
HEALTHY_MACHINES, HEALTHY_HOURS = 400, 6.0
NO_SHRINK = {"physics.regression.extrapolation": "0"}
NO_TREND = {"physics.trend_weight.log_vibration_residual": "0"}
# (what the variant is, its overrides of the packaged spec); the packaged spec itself is the empty override.
VARIANTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("single-window z only", {**NO_SHRINK, **NO_TREND}),
    ("+ residuals shrunk far from the learned operating points", NO_TREND),
    ("+ vibration trend: the packaged spec", {}),
    ("the same, heavier trend", {"physics.trend_weight.log_vibration_residual": "1.7"}),
    ("strong shrink, heavier trend", {"physics.regression.extrapolation": "1.0",
                                      "physics.trend_weight.log_vibration_residual": "2.0"}),
    ("no shrink, no trend, heavier vibration weight", {**NO_SHRINK, **NO_TREND,
                                                       "physics.weight.log_vibration_residual": "1.8"}),
)


def measure_variants(seeds: list[int]) -> dict:
    packaged = load_model_specs(PACKAGED_MODELS_FILE)
    variants = []
    for name, overrides in VARIANTS:
        specs = packaged.with_overrides(overrides)
        runs = []
        for seed in seeds:
            runs.append(measure(specs, "bearing_wear", seed, FAULT_MACHINES, FAULT_HOURS))
            runs.append(measure(specs, "none", seed, HEALTHY_MACHINES, HEALTHY_HOURS))
        summary = summarise(runs)
        if not summary["by_fault"]:
            raise RuntimeError(f"tuning variant {name!r}: the bearing-wear runs of seeds {seeds} had no events")
        wear = summary["by_fault"][0]
        variants.append({
            "name": name,
            "overrides": overrides,
            "bearing_wear": {key: wear[key] for key in ("events", "detected", "f1", "median_delay_windows",
                                                         "median_delay_s")},
            "healthy": summary["healthy"],
        })
        print(f"  {name}: median delay {wear['median_delay_windows']} windows ({wear['median_delay_s']:.1f} s), "
              f"{summary['healthy']['false_alarms_per_machine_day']} false alarms per machine-day",
              file=sys.stderr, flush=True)
    return {
        "seeds": seeds,
        "fault_runs": {"machines": FAULT_MACHINES, "hours": FAULT_HOURS, "fault": "bearing_wear"},
        "healthy_runs": {"machines": HEALTHY_MACHINES, "hours": HEALTHY_HOURS},
        "variants": variants,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    print(json.dumps(measure_variants(args.seeds)))


if __name__ == "__main__":
    main()
