"""Formatting for `bench.readme`: the results it reads, figures rounded as a reader rounds, and the source
line every generated block ends with.

>>> n(253_357.5), dec(37.65, 1), kilo(331_225), megabytes(69_871_806), megabytes(1_400), megabytes(5)
('253,358', '37.7', '331k', '69.9 MB', '1.4 kB', '5 B')
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from bench.results_file import LATEST, load, sections

QUALITY = LATEST.parent / "model_quality.json"


class Results:
    """The sections of latest.json (measured by its last run or under `previous`) and model_quality.json's rows."""

    def __init__(self, latest: dict, quality_rows: dict | None) -> None:
        self.latest = latest
        self.sections = sections(latest)
        self.quality_rows = quality_rows

    @classmethod
    def from_files(cls, latest: Path = LATEST, quality: Path = QUALITY) -> Results:
        return cls(load(latest), json.loads(quality.read_text()) if quality.exists() else None)

    def get(self, key: str) -> dict | None:
        return self.sections.get(key)


def whole(x: float) -> int:
    """Rounded half up (253,357.5 -> 253,358), as a reader rounds."""
    return math.floor(x + 0.5)


def n(x: float) -> str:
    return f"{whole(x):,}"


def dec(x: float, places: int) -> str:
    """`x` with `places` decimals, rounded half up on its decimal value (37.65 -> 37.7, as a reader rounds)."""
    return str(Decimal(repr(x)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def kilo(x: float) -> str:
    return f"{whole(x / 1000)}k"


def mb(x: float) -> str:
    return f"{whole(x):,} MB"


def megabytes(size: float) -> str:
    """A byte count in the unit that keeps it readable (decimal units, as `ls -h --si`)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{dec(size / scale, 1)} {unit}"
    return f"{whole(size)} B"


def source(results: Results, key: str) -> str:
    """Where a block's figures come from: the section, its date and commit, and how to measure it again."""
    p = results.get(key)["provenance"]
    carried = key in results.latest.get("previous", {})
    where = f"`{key}` in `bench/results/latest.json`" + (" (under `previous`)" if carried else "")
    if p.get("commit") is None:
        commit = "at an unknown commit"
    else:
        commit = f"at commit {p['commit'][:7]}" + (" (inferred)" if "commit" in p.get("inferred", []) else "")
        commit += {True: " with uncommitted changes", False: "", None: ", tree state unknown"}[p.get("dirty")]
    if p.get("note"):
        commit += " (see its `provenance.note`)"
    return f"_Source: {where}, measured {p['date']} {commit}; measure again: `{p['reproduce']}`._"


def missing(key: str, command: str) -> str:
    return f"_Not measured yet: `{command}` measures it (`{key}` in `bench/results/latest.json`)._"


def file_size(name: str, pattern: str) -> tuple[int, ...]:
    match = re.search(pattern, name)
    if match is None:
        raise ValueError(f"recording name {name!r} does not match {pattern!r}")
    return tuple(int(group) for group in match.groups())


def wrap(block: str, width: int = 110) -> str:
    """Prose lines wrapped as the rest of the README is; table rows and markers left whole."""
    lines = []
    for line in block.split("\n"):
        text = line.lstrip()
        if len(line) <= width or text.startswith(("|", "<!--")):
            lines.append(line)
            continue
        indent = line[: len(line) - len(text)]
        lines += textwrap.wrap(text, width=width, initial_indent=indent,
                               subsequent_indent=indent + ("  " if text.startswith("- ") else ""),
                               break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)
