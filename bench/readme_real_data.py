"""The README block `real-data` (`bench.readme` renders it): the models on SKAB and NAB (`bench/real_data.py`).

Kept out of bench/readme.py, which is long enough; the figures come from the `real_data` section of
bench/results/latest.json.
"""

from __future__ import annotations

from bench.readme_format import Results, dec, missing, n, source

KEY = "real_data"
SKAB_TARGET = "F1 ≥ 0.78 with FAR ≤ 15 %"
NAB_TARGET = "raw score ≥ 1.8"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{dec(100 * x, 1)} %"


def _mark(ok: bool) -> str:
    return "✔" if ok else "✘"


def real_data(results: Results) -> str:
    s = results.get(KEY)
    if s is None:
        return missing(KEY, "python -m bench.run --only real-data")
    if "skipped" in s:
        return f"Not measured in the latest run: {s['skipped']}.\n\n{source(results, KEY)}"
    packaged = s["variants"]["packaged"]
    skab, nab = packaged["skab"], packaged["nab"]
    lines = [
        "| data (real sensors) | measure | packaged spec | target | command |",
        "| --- | --- | --- | --- | --- |",
        f"| SKAB valve2 + other ({n(skab['files'])} files, {n(skab['readings'])} readings at 1 Hz; the first 400 "
        f"rows of each file train, the rest scored point-wise, pooled) | F1 / FAR / MAR | **{dec(skab['f1'], 3)}** / "
        f"{_pct(skab['far'])} / {_pct(skab['mar'])} | {SKAB_TARGET} "
        f"{_mark(skab['f1'] >= 0.78 and skab['far'] <= 0.15)} | `{skab['reproduce']}` |",
        f"| NAB `ambient_temperature_system_failure` ({n(nab['readings'])} hourly readings, 2 windows), standard "
        f"profile | raw score (normalised) | **{dec(nab['raw_score'], 2)}** ({dec(nab['normalised_score'], 1)}); "
        f"{nab['tp']} of {nab['tp'] + nab['fn']} windows detected, {nab['fp']} false positives | {NAB_TARGET} "
        f"{_mark(nab['raw_score'] >= 1.8)} | `{nab['reproduce']}` |",
    ]
    inside, outside = nab.get("max_score_in_windows"), nab.get("max_score_outside_windows")
    if inside and outside is not None:
        lines += ["", "NAB, where the scores leave no threshold: the highest score inside each labelled window is "
                  + " and ".join("–" if x is None else dec(x, 1) for x in inside)
                  + f"; after the probation, healthy stretches outside the windows reach {dec(outside, 1)} (normal-"
                  "equivalent z). A window whose highest score is below that cannot be caught without more false "
                  "positives than it earns."]
    folders = skab.get("by_folder", {})
    if folders:
        lines += ["", "SKAB by folder, same run: " + "; ".join(
            f"`{name}` ({f['files']} files) F1 {dec(f['f1'], 3)}, FAR {_pct(f['far'])}, MAR {_pct(f['mar'])}"
            for name, f in folders.items()) + "."]
    others = [(name, v) for name, v in s["variants"].items() if name != "packaged"]
    if others:
        lines += ["", "Variants of the packaged spec on the same data, for comparison:", "",
                  "| variant | overrides | SKAB F1 / FAR / MAR | NAB raw score |", "| --- | --- | --- | --- |"]
        for name, v in others:
            overrides = ", ".join(f"`{k} = {val}`" for k, val in v["overrides"].items()) or "none"
            lines.append(f"| {name} | {overrides} | {dec(v['skab']['f1'], 3)} / {_pct(v['skab']['far'])} / "
                         f"{_pct(v['skab']['mar'])} | {dec(v['nab']['raw_score'], 2)} |")
    return "\n".join([*lines, "", source(results, KEY)])
