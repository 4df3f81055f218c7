"""`plantpulse keys`: issue, rotate, revoke and list device keys in $DEVICE_KEYS_FILE (mode 0600).

Secrets are printed only with `--show-secret` (to hand to the device); `list` never prints them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from plantpulse.cli_common import fail, settings_or_fail

keys_app = typer.Typer(no_args_is_help=True, help="Device keys: create, rotate, revoke, list ($DEVICE_KEYS_FILE).")


def _registry_path() -> Path:
    settings = settings_or_fail()
    return Path(settings.device_keys_file or "device-keys.json")


def _change(action: str, targets: list[str], show_secret: bool) -> None:
    from connectors.device_registry import KeyRegistry
    from plantpulse.device_signing import encode_secret

    path = _registry_path()
    try:
        registry = KeyRegistry.load(path)
        changed = [getattr(registry, action)(target) for target in targets]
        registry.save(path)
    except (ValueError, OSError) as error:
        fail(str(error))
    for key in changed:
        line = f"{key.key_id}\t{key.machine_id}\t{key.status}"
        typer.echo(line + (f"\t{encode_secret(key.secret)}" if show_secret and action != "revoke" else ""))


@keys_app.command()
def create(
    machine_ids: list[str] = typer.Argument(..., help="Machines (devices) to issue a first key for."),
    show_secret: bool = typer.Option(False, "--show-secret", help="Print the secret (base64url) to give the device."),
) -> None:
    """Issue each machine its first key (key id, machine, status[, secret] per line)."""
    _change("create", machine_ids, show_secret)


@keys_app.command()
def rotate(
    machine_ids: list[str] = typer.Argument(..., help="Machines to issue a second, newer key for."),
    show_secret: bool = typer.Option(False, "--show-secret", help="Print the new secret (base64url)."),
) -> None:
    """Issue a new key beside the active one; both verify until the old one is revoked (at most two active)."""
    _change("rotate", machine_ids, show_secret)


@keys_app.command()
def revoke(key_ids: list[str] = typer.Argument(..., help="Key ids, e.g. M00042.k1.")) -> None:
    """Revoke keys: readings signed with them are dead-lettered as `revoked_key` from the flow's next reload."""
    _change("revoke", key_ids, False)


@keys_app.command("list")
def list_keys(
    machine_id: str | None = typer.Option(None, "--machine", help="Only this machine's keys."),
) -> None:
    """Key id, machine, status and creation time per line; never the secrets."""
    from connectors.device_registry import KeyRegistry

    try:
        registry = KeyRegistry.load(_registry_path())
    except ValueError as error:
        fail(str(error))
    for key in sorted(registry.keys.values(), key=lambda k: (k.machine_id, k.created_at)):
        if machine_id is None or key.machine_id == machine_id:
            typer.echo(f"{key.key_id}\t{key.machine_id}\t{key.status}\t{key.created_at}")
