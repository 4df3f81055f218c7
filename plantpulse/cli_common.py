"""What every `plantpulse` command shares: one-line failures and settings read from the environment."""

from __future__ import annotations

from typing import NoReturn

import typer
from pydantic import ValidationError

from plantpulse.settings import Settings


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"plantpulse: {message}", err=True)
    raise typer.Exit(code)


def settings_or_fail(**overrides: object) -> Settings:
    """`Settings` from the environment; an invalid variable ends the command with one line naming it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]).upper()
        fail(f"invalid configuration {where}: {first['msg']}")
