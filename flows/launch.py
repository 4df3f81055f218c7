"""How the live flow is started: recovery and epochs from the settings, for both ways of running it.

`plantpulse run` and `python -m bytewax.run flows.telemetry:flow` take recovery from the same settings:
`RECOVERY_DIR` (a store initialised with `RECOVERY_PARTITIONS` partitions when missing or empty, by process 0
of a cluster only; recovery off when unset) and `SNAPSHOT_INTERVAL_SECONDS` (the epoch interval, which is also
the snapshot interval).

`python -m bytewax.run` knows only its own options (`-r/-s/-b`, or `BYTEWAX_RECOVERY_DIRECTORY`,
`BYTEWAX_SNAPSHOT_INTERVAL`, `BYTEWAX_RECOVERY_BACKUP_INTERVAL`), which it parses into the keyword arguments
of `cli_main` *before* it imports the flow. `for_bytewax_run` runs when it looks `flow` up and hands it the
settings by updating those arguments (bytewax 0.21: the `kwargs` of its `__main__`). bytewax.run's own
options may repeat the settings but not contradict them, and a bytewax.run that cannot be handed them is
refused when recovery is asked for: either way one line on stderr and exit code 2, as `plantpulse run` does
for an invalid configuration. SIGTERM/SIGINT stop it cleanly, as they stop `plantpulse run`
(`plantpulse.stopping`). Both check the flow's Kafka topics first (`prepare_topics`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from pydantic import ValidationError

from connectors.topics import TopicCheckError, check_flow_topics, ensure_topics, flow_topics, topic_configs
from plantpulse.settings import Settings
from plantpulse.stopping import install_stop_handlers

__all__ = ["LaunchConfigError", "epoch_interval", "for_bytewax_run", "prepare_topics", "recovery_config"]

_FIX = "set RECOVERY_DIR and SNAPSHOT_INTERVAL_SECONDS only (or run `plantpulse run`)"


class LaunchConfigError(ValueError):
    """The flow cannot be started with the recovery the settings ask for."""


def epoch_interval(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.snapshot_interval_seconds)


def recovery_config(settings: Settings) -> RecoveryConfig | None:
    """Bytewax recovery in `RECOVERY_DIR` (the store created there if missing or empty), None when unset."""
    if settings.recovery_dir is None:
        return None
    directory = Path(settings.recovery_dir)
    if not directory.exists() or not any(directory.iterdir()):
        directory.mkdir(parents=True, exist_ok=True)
        process_id, _addresses = settings.cluster()
        if process_id in (None, 0):
            # The partition count is fixed for the store's life. Bytewax finds the partitions on whichever
            # process holds them and routes every worker's snapshots there, so one store (process 0's, the pod
            # that exists at every replica count) serves any number of processes: rescaling keeps all state.
            init_db_dir(directory, settings.recovery_partitions)
        else:
            # A second copy of the partitions on another process (its own volume) would compete with process 0's.
            logging.getLogger(__name__).info(
                "recovery store: process %d keeps no partitions (process 0 holds them)", process_id
            )
    return RecoveryConfig(str(directory))


def total_workers(settings: Settings) -> int:
    """Workers of the whole cluster: processes (BYTEWAX_ADDRESSES or BYTEWAX_REPLICAS) x workers per process."""
    _process_id, addresses = settings.cluster()
    return len(addresses or [""]) * settings.bytewax_workers_per_process


def prepare_topics(settings: Settings) -> None:
    """Before the flow starts: its topics exist (created first when KAFKA_CREATE_TOPICS=true, as `plantpulse topics
    ensure` creates them) and the telemetry topic has a partition for every worker of the cluster.

    :raises TopicCheckError: (a LookupError) one line: what is missing and how to fix it.
    """
    if settings.kafka_create_topics:
        configs = topic_configs(settings)
        try:
            ensure_topics(settings, only={topic: configs[topic] for topic in flow_topics(settings)})
        except RuntimeError as error:  # the broker refused (ACLs, replication factor): say so in one line
            raise TopicCheckError(f"KAFKA_CREATE_TOPICS=true: {error}") from None
    check_flow_topics(settings, total_workers(settings))


def for_bytewax_run(build: Callable[[Settings], Dataflow]) -> Dataflow:
    """The flow `build` makes from the settings; under `python -m bytewax.run` also its recovery and epochs.

    Outside bytewax.run (a script or test reading `flows.telemetry.flow`) this only builds the flow.
    """
    run_kwargs = _bytewax_run_kwargs()
    if run_kwargs is None:
        return build(Settings())
    # As under `plantpulse run`: SIGTERM/SIGINT end the inputs and drain the flow (sinks write what they
    # hold, the final epoch is snapshotted) instead of Bytewax's abrupt stop.
    install_stop_handlers()
    try:
        settings = Settings()
        # bytewax.run configures no logging; the flow's INFO lines (resumed offsets, stops) matter here too.
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _hand_over(settings, run_kwargs)
        prepare_topics(settings)
        return build(settings)
    except (ValueError, OSError, LookupError) as error:  # ValueError: also ValidationError, LaunchConfigError
        # As `plantpulse run`: a configuration problem is one line, not a traceback from inside bytewax.run.
        print(f"plantpulse: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def _bytewax_run_kwargs() -> dict[str, Any] | None:
    """The keyword arguments bytewax.run's `__main__` will pass to `cli_main`; {} when it is bytewax.run
    but of an unknown make; None when the process was not started by `python -m bytewax.run`."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) != "bytewax.run":
        return None
    run_kwargs = vars(main).get("kwargs")
    if isinstance(run_kwargs, dict) and {"recovery_config", "epoch_interval"} <= run_kwargs.keys():
        return run_kwargs
    return {}


def _hand_over(settings: Settings, run_kwargs: dict[str, Any]) -> None:
    if not run_kwargs:
        if settings.recovery_dir is not None:
            raise LaunchConfigError(
                f"RECOVERY_DIR is {settings.recovery_dir} but this bytewax.run cannot be given it (not bytewax "
                "0.21's `python -m bytewax.run`): run `plantpulse run`"
            )
        return
    given: RecoveryConfig | None = run_kwargs["recovery_config"]
    if given is not None and (
        settings.recovery_dir is None or Path(given.db_dir).resolve() != Path(settings.recovery_dir).resolve()
    ):
        raise LaunchConfigError(
            f"python -m bytewax.run was given recovery directory {given.db_dir} (-r or BYTEWAX_RECOVERY_DIRECTORY) "
            f"but RECOVERY_DIR is {settings.recovery_dir or 'unset'}: {_FIX}"
        )
    ours, theirs = epoch_interval(settings), _bytewax_snapshot_option()
    if theirs is not None and theirs != ours:
        raise LaunchConfigError(
            f"python -m bytewax.run was given a snapshot interval of {theirs.total_seconds():g} s (-s or "
            f"BYTEWAX_SNAPSHOT_INTERVAL) but SNAPSHOT_INTERVAL_SECONDS is {ours.total_seconds():g}: {_FIX}"
        )
    mine = recovery_config(settings)  # also creates the store, which bytewax.run's own -r would not
    if given is None:
        run_kwargs["recovery_config"] = mine
    run_kwargs["epoch_interval"] = ours


def _bytewax_snapshot_option() -> timedelta | None:
    """bytewax.run's own `-s` (or BYTEWAX_SNAPSHOT_INTERVAL) as its parser reads it; None when not given.

    Needed because without `-r` bytewax.run puts its 10 s default in the same argument an explicit `-s 10`
    would fill."""
    from bytewax.run import _create_arg_parser  # the parser bytewax.run itself uses (abbreviations, env)

    options, _unknown = _create_arg_parser().parse_known_args(sys.argv[1:])
    return options.snapshot_interval


def _one_line(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        return f"invalid configuration {'.'.join(str(p) for p in first['loc']).upper()}: {first['msg']}"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
