"""`plantpulse topics ensure`: create PlantPulse's Kafka topics as the settings say, and check the existing ones.

The one topic creator (`connectors.topics.ensure_topics`): the simulator, the demo, the notifier, `plantpulse run`
with KAFKA_CREATE_TOPICS=true and the compose/Kubernetes init step all create topics with the same partitions
(TOPIC_PARTITIONS), replication (TOPIC_REPLICATION_FACTOR) and retention (`*_RETENTION_HOURS`).
"""

from __future__ import annotations

import typer

from plantpulse.cli_common import fail, settings_or_fail

topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics: create and check them from the settings.")


@topics_app.command()
def ensure(
    check: bool = typer.Option(False, "--check", help="Create nothing: only report (exit 1 if not as required)."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds to wait for the broker."),
) -> None:
    """Create missing topics and check existing ones: one line per topic; exit 0 when all are as required,
    1 (problems on stderr) when a topic is missing (--check), has fewer partitions or replicas than configured,
    or another retention or cleanup policy."""
    from confluent_kafka import KafkaException

    from connectors.topics import (
        KafkaUnreachableError,
        check_reachable,
        describe_topics,
        ensure_topics,
        topic_configs,
        topic_problems,
    )

    settings = settings_or_fail()
    try:
        check_reachable(settings, timeout_s=min(timeout, 10.0))
        configs = topic_configs(settings)
        created = [] if check else ensure_topics(settings, timeout_s=timeout)
        states = describe_topics(settings, configs, timeout_s=timeout)
    except (KafkaUnreachableError, ValueError, RuntimeError, TimeoutError, ConnectionError, KafkaException) as error:
        fail(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    for name, state in states.items():
        if state is None:
            typer.echo(f"{name}\tmissing")
            continue
        retention = state.configs.get("retention.ms")
        hours = f"{int(retention) / 3_600_000:g} h" if retention is not None and retention.lstrip("-").isdigit() else "?"
        typer.echo(f"{name}\t{'created' if name in created else 'exists'}\t{state.partitions} partitions\t"
                   f"replication {state.replication_factor}\tretention {hours}\t"
                   f"cleanup {state.configs.get('cleanup.policy', '?')}")
    problems = topic_problems(settings, states)
    for problem in problems:
        typer.echo(f"plantpulse: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
