"""The routing file (`NOTIFY_ROUTES_FILE`, TOML): named channels, and routes that send transitions to them.

::

    [channel.ops]                          # a channel: a name and a type
    type = "webhook"                       # webhook | slack | email | log
    url_env = "NOTIFY_OPS_WEBHOOK_URL"     # webhook, slack: the env var that holds the URL (never the URL)
    rate_per_minute = 60                   # optional token bucket: sustained rate ...
    burst = 5                              # ... and how many may go back to back (default 1)

    [channel.maintenance-mail]
    type = "email"
    to = ["maintenance@example.com"]       # the SMTP server and its credentials: SMTP_* env vars

    [[route]]
    name = "critical"                      # optional (default "route #N"); errors and logs use it
    severity = ["critical"]                # match fields: severity, machine_type, site, rule_id, kind;
    site = ["*"]                           #   lists, "*" = any; a missing field matches anything
    channels = ["ops", "maintenance-mail"]
    notify_on_resolve = true               # default false: a resolve is quiet
    transitions = ["opened", "escalated"]  # default opened + escalated (+ resolved with notify_on_resolve)
    remind_every_minutes = 15              # optional: repeat while the incident is open and unacknowledged

A transition goes to the union of the channels of every route that matches it (once per channel). Errors
name the file, the route or channel, and the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plantpulse.schema import INCIDENT_TRANSITIONS

CHANNEL_TYPES = ("webhook", "slack", "email", "log")
MATCH_FIELDS = ("severity", "machine_type", "site", "rule_id", "kind")
SEVERITIES = ("info", "warning", "critical")
KINDS = ("threshold", "anomaly", "sensor")
DEFAULT_TRANSITIONS = ("opened", "escalated")
_KNOWN_VALUES = {"severity": SEVERITIES, "kind": KINDS}
_CHANNEL_KEYS = {
    "webhook": {"url_env"},
    "slack": {"url_env"},
    "email": {"to", "subject_prefix"},
    "log": set(),
}
_COMMON_CHANNEL_KEYS = {"type", "rate_per_minute", "burst"}
_ROUTE_KEYS = {"name", "channels", "transitions", "notify_on_resolve", "remind_every_minutes", *MATCH_FIELDS}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RoutingFileError(ValueError):
    """The routing file is missing, unreadable or describes an impossible channel or route."""


@dataclass(frozen=True)
class ChannelSpec:
    """A channel as the file describes it (its URL or SMTP server is resolved from the environment later)."""

    name: str
    type: str
    url_env: str | None = None
    to: tuple[str, ...] = ()
    subject_prefix: str = "PlantPulse"
    rate_per_minute: float | None = None  # None: no rate limit
    burst: int = 1


@dataclass(frozen=True)
class Route:
    name: str
    match: Mapping[str, frozenset[str] | None]  # field -> allowed values; None: any
    channels: tuple[str, ...]
    transitions: frozenset[str]
    remind_every_s: float | None = None

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether the incident (any transition) is this route's: every match field allows its value."""
        return all(allowed is None or str(record.get(field)) in allowed for field, allowed in self.match.items())

    def sends(self, record: Mapping[str, Any]) -> bool:
        return record.get("transition") in self.transitions and self.matches(record)


@dataclass(frozen=True)
class Routing:
    path: Path
    channels: Mapping[str, ChannelSpec]
    routes: tuple[Route, ...]

    def channels_for(self, record: Mapping[str, Any]) -> list[str]:
        """The channels a transition goes to, each once, in the order the routes name them."""
        names = [channel for route in self.routes if route.sends(record) for channel in route.channels]
        return list(dict.fromkeys(names))

    def reminders_for(self, record: Mapping[str, Any]) -> dict[str, float]:
        """channel -> reminder interval (s) for an open incident; the shortest when several routes remind it."""
        intervals: dict[str, float] = {}
        for route in self.routes:
            if route.remind_every_s is not None and route.matches(record):
                for channel in route.channels:
                    intervals[channel] = min(intervals.get(channel, route.remind_every_s), route.remind_every_s)
        return intervals

    def users(self) -> dict[str, list[str]]:
        """channel -> names of the routes that use it (only channels some route uses)."""
        used: dict[str, list[str]] = {}
        for route in self.routes:
            for channel in route.channels:
                used.setdefault(channel, []).append(route.name)
        return used


def load_routing(path: Path) -> Routing:
    """Read and check a routing file; every error names the file, the route or channel, and the field."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise RoutingFileError(f"routing file {path}: {error}") from error
    unknown = sorted(set(document) - {"channel", "route"})
    if unknown:
        raise RoutingFileError(
            f"routing file {path}: unknown top-level key(s) {unknown}; expected [channel.NAME] tables and [[route]] entries"
        )
    channel_tables = document.get("channel", {})
    route_entries = document.get("route", [])
    if not isinstance(channel_tables, dict) or not all(isinstance(t, dict) for t in channel_tables.values()):
        raise RoutingFileError(f"routing file {path}: 'channel' must hold tables [channel.NAME]")
    if not isinstance(route_entries, list) or not all(isinstance(r, dict) for r in route_entries):
        raise RoutingFileError(f"routing file {path}: 'route' must be an array of tables [[route]]")
    if not route_entries:
        raise RoutingFileError(f"routing file {path}: no [[route]]: nothing would ever be sent")
    channels = {name: _parse_channel(path, name, table) for name, table in channel_tables.items()}
    routes = tuple(_parse_route(path, index, entry, channels) for index, entry in enumerate(route_entries))
    names = [route.name for route in routes]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise RoutingFileError(f"routing file {path}: duplicate route name(s) {duplicated}")
    return Routing(path, channels, routes)


def _parse_channel(path: Path, name: str, table: dict[str, Any]) -> ChannelSpec:
    where = f"routing file {path}, channel {name!r}"
    if not _CHANNEL_NAME.match(name):
        raise RoutingFileError(f"{where}: invalid name; use 1-64 of [A-Za-z0-9_.-], starting with a letter or digit")
    kind = table.get("type")
    if kind not in CHANNEL_TYPES:
        raise RoutingFileError(f"{where}: field 'type' is {kind!r}, expected one of {CHANNEL_TYPES}")
    _no_unknown_keys(where, table, _COMMON_CHANNEL_KEYS | _CHANNEL_KEYS[kind])
    spec: dict[str, Any] = {"name": name, "type": kind}
    if kind in ("webhook", "slack"):
        url_env = table.get("url_env")
        if not isinstance(url_env, str) or not _ENV_NAME.match(url_env):
            raise RoutingFileError(
                f"{where}: field 'url_env' must name the environment variable that holds the URL "
                f"(e.g. \"NOTIFY_OPS_WEBHOOK_URL\"), got {url_env!r}; URLs are never written in this file"
            )
        spec["url_env"] = url_env
    if kind == "email":
        spec["to"] = tuple(_strings(where, "to", table.get("to")))
        if not spec["to"] or not all("@" in address for address in spec["to"]):
            raise RoutingFileError(f"{where}: field 'to' must list e-mail addresses, got {table.get('to')!r}")
        if "subject_prefix" in table:
            if not isinstance(table["subject_prefix"], str):
                raise RoutingFileError(f"{where}: field 'subject_prefix' must be a string")
            spec["subject_prefix"] = table["subject_prefix"]
    if "rate_per_minute" in table:
        spec["rate_per_minute"] = _positive(where, "rate_per_minute", table["rate_per_minute"])
    if "burst" in table:
        burst = table["burst"]
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise RoutingFileError(f"{where}: field 'burst' must be an integer >= 1, got {burst!r}")
        if "rate_per_minute" not in table:
            raise RoutingFileError(f"{where}: field 'burst' needs 'rate_per_minute' (there is no limit without it)")
        spec["burst"] = burst
    return ChannelSpec(**spec)


def _parse_route(path: Path, index: int, entry: dict[str, Any], channels: Mapping[str, ChannelSpec]) -> Route:
    name = entry.get("name", f"route #{index + 1}")
    where = f"routing file {path}, route {name!r} (#{index + 1})"
    if not isinstance(name, str) or not name:
        raise RoutingFileError(f"{where}: field 'name' must be a non-empty string")
    _no_unknown_keys(where, entry, _ROUTE_KEYS)
    names = _strings(where, "channels", entry.get("channels"))
    if not names:
        raise RoutingFileError(f"{where}: field 'channels' must list at least one channel")
    for channel in names:
        if channel not in channels:
            raise RoutingFileError(
                f"{where}: field 'channels' names {channel!r}, which is not defined; defined: {sorted(channels)}"
            )
    match: dict[str, frozenset[str] | None] = {}
    for field in MATCH_FIELDS:
        values = _strings(where, field, entry.get(field, ["*"]))
        if not values:
            raise RoutingFileError(f"{where}: field {field!r} is empty (it would match nothing); use [\"*\"] for any")
        known = _KNOWN_VALUES.get(field)
        wrong = [v for v in values if known is not None and v != "*" and v not in known]
        if wrong:
            raise RoutingFileError(f"{where}: field {field!r} has {wrong}, expected values from {known} or \"*\"")
        match[field] = None if "*" in values else frozenset(values)
    on_resolve = entry.get("notify_on_resolve", False)
    if not isinstance(on_resolve, bool):
        raise RoutingFileError(f"{where}: field 'notify_on_resolve' must be true or false, got {on_resolve!r}")
    listed = _strings(where, "transitions", entry["transitions"]) if "transitions" in entry else None
    wrong = [t for t in listed or () if t not in INCIDENT_TRANSITIONS]
    if wrong:
        raise RoutingFileError(f"{where}: field 'transitions' has {wrong}, expected values from {INCIDENT_TRANSITIONS}")
    if listed is not None and "resolved" in listed and entry.get("notify_on_resolve") is False:
        raise RoutingFileError(f"{where}: field 'transitions' lists 'resolved' but notify_on_resolve = false")
    transitions = set(DEFAULT_TRANSITIONS if listed is None else listed) | ({"resolved"} if on_resolve else set())
    remind = entry.get("remind_every_minutes")
    remind_s = None if remind is None else 60.0 * _positive(where, "remind_every_minutes", remind)
    return Route(name, match, tuple(names), frozenset(transitions), remind_s)


def _no_unknown_keys(where: str, table: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RoutingFileError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _strings(where: str, field: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RoutingFileError(f"{where}: field {field!r} must be a list of strings, got {value!r}")
    return list(value)


def _positive(where: str, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise RoutingFileError(f"{where}: field {field!r} must be a number > 0, got {value!r}")
    return float(value)
