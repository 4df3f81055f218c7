"""Resuming `FleetModels` from a snapshot under the spec file read at this start.

Configuration comes from files, state from snapshots: the specs pickled with a snapshot are replaced by
the current ones, and only machines whose spec changed lose what they learned. Each model group (the
machines under one spec) records the fingerprint of the spec it learned under; a machine keeps its state
when the spec it falls under now has the same name and fingerprint. So a changed `[pump]` table resets
the pumps only; a machine type that gets (or loses) a table of its own resets that type's machines only;
a changed `[default]` resets every machine, since every spec inherits from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any

from models.spec import ModelSpec, ModelSpecs

if TYPE_CHECKING:
    from models.fleet_models import FleetModels


def spec_fingerprint(spec: ModelSpec) -> str:
    """A digest of every model field of `spec` (its name included): equal fingerprints, equal models.

    The `incident_*` fields only shape incidents, so changing them keeps the machines' learned state."""
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if not f.name.startswith("incident_")}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def adopt_specs(models: FleetModels, specs: ModelSpecs) -> dict[str, int]:
    """Put `specs` in place of `models.specs`, resetting the machines whose spec changed (they start afresh,
    like machines never seen, at their next window). Returns {spec name now: machines reset}."""
    types = getattr(models, "types", None)
    if types is None:  # a snapshot from before types were kept: a type table's group name is the type
        types = {m: name for m, (name, _) in models.where.items() if name != "default"}
    unchanged: dict[str, ModelSpec] = {}
    for name, group in models.groups.items():
        current = specs.default if name == "default" else specs.by_type.get(name)
        if current is not None and _group_fingerprint(group) == spec_fingerprint(current):
            unchanged[name] = current
    # Without its type, a [default] machine of such an old snapshot may belong to a table added since.
    added = set(specs.by_type) - set(models.specs.by_type)
    reset: dict[str, int] = {}
    for machine_id, (name, _) in list(models.where.items()):
        machine_type = types.get(machine_id)
        now = specs.for_type(machine_type).name if machine_type is not None else (None if added else "default")
        if name in unchanged and now == name:
            continue
        del models.where[machine_id]  # its slot in a group that stays is left unused
        reset[now or name] = reset.get(now or name, 0) + 1
    for name in list(models.groups):
        if name in unchanged:
            models.groups[name].spec = unchanged[name]
        else:
            del models.groups[name]
    models.specs, models.types = specs, types
    return reset


def _group_fingerprint(group: Any) -> str | None:
    fingerprint = getattr(group, "fingerprint", None)  # absent in snapshots from before fingerprints
    if fingerprint is not None:
        return fingerprint
    try:
        return spec_fingerprint(group.spec)
    except AttributeError:  # a spec pickled before a field was added: it cannot be the current one
        return None
