"""Printing query results for people (rich table) and for programs (CSV, JSON lines)."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table


def print_result(columns: Sequence[str], rows: Sequence[Sequence[Any]], output: str) -> None:
    if output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif output == "json":
        for row in rows:
            sys.stdout.buffer.write(orjson.dumps(dict(zip(columns, row)), default=str) + b"\n")
        sys.stdout.flush()
    else:
        Console().print(result_table(columns, rows))


def result_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> Table:
    table = Table(*columns, title=title, show_lines=False)
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.6g}"
    if isinstance(value, (datetime, date)):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    return "" if value is None else str(value)
