"""`plantpulse notify` end to end: the real command as a subprocess on the session's embedded broker, a real
HTTP receiver (webhook and Slack endpoints that fail on purpose) and a real SMTP server (aiosmtpd, STARTTLS
with a trustme CA, AUTH). Transitions are produced to a fresh incidents topic the way the flow publishes them."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from connectors.topics import ensure_topics, read_topic
from notify.channels import DeliveryError, build_senders
from notify.messages import Notification
from notify.routing import load_routing
from plantpulse.settings import Settings
from tests.notifykit import Incident, MailSink, Receiver, SmtpServer, smtp_server
from tests.processes import stop

pytestmark = pytest.mark.integration

PLANTPULSE = str(Path(sys.executable).with_name("plantpulse"))
REMIND_MINUTES = 0.03  # 1.8 s
OPS_RATE_PER_MINUTE, OPS_BURST = 120, 2
ROUTES = f"""
[channel.ops]
type = "webhook"
url_env = "NOTIFY_TEST_OPS_URL"
rate_per_minute = {OPS_RATE_PER_MINUTE}
burst = {OPS_BURST}

[channel.chat]
type = "slack"
url_env = "NOTIFY_TEST_CHAT_URL"

[channel.mail]
type = "email"
to = ["oncall-a@example.com", "lead-a@example.com"]

[channel.broken]
type = "webhook"
url_env = "NOTIFY_TEST_BROKEN_URL"

[channel.spare]  # no route uses it: its variable need not be set
type = "webhook"
url_env = "NOTIFY_TEST_UNSET_URL"

[[route]]
name = "critical"
severity = ["critical"]
channels = ["ops", "chat"]
notify_on_resolve = true
remind_every_minutes = {REMIND_MINUTES}

[[route]]
name = "site-a"
site = ["site-a"]
severity = ["warning", "critical"]
channels = ["mail"]
transitions = ["opened", "acknowledged"]

[[route]]
name = "anomalies"
kind = ["anomaly"]
channels = ["broken"]
"""


def expected_channels(r: dict[str, Any]) -> set[str]:
    """The channels each transition must reach, written from ROUTES by hand (not by the routing code)."""
    channels = set()
    if r["severity"] == "critical" and r["transition"] in ("opened", "escalated", "resolved"):
        channels |= {"ops", "chat"}
    if r["site"] == "site-a" and r["severity"] in ("warning", "critical") and r["transition"] in ("opened",
                                                                                                   "acknowledged"):
        channels.add("mail")
    if r["kind"] == "anomaly" and r["transition"] in ("opened", "escalated"):
        channels.add("broken")
    return channels


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver(hang_s=2.5)  # longer than the notifier's HTTP timeout below
    yield running
    running.close()


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    yield from smtp_server(tmp_path, MailSink(fail_first=1))


def _settings(kafka_settings: Callable[..., Settings]) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return kafka_settings(incidents_topic=f"incidents-{suffix}", notify_deadletter_topic=f"notify-dl-{suffix}")


def _produce(settings: Settings, records: list[dict[str, Any]] | list[bytes]) -> None:
    producer = Producer(settings.kafka_config())
    for r in records:
        value, key = (r, b"M-x") if isinstance(r, bytes) else (orjson.dumps(r), r["machine_id"].encode())
        producer.produce(settings.incidents_topic, value, key)
    if producer.flush(10) != 0:
        raise AssertionError("test records were not acknowledged by the broker")


def _notifier(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([PLANTPULSE, "notify", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _wait(condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path,
          timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the notifier exited ({process.returncode}) waiting for {what}:\n"
                                 f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _accepted(receiver: Receiver, smtp: SmtpServer) -> set[tuple[str, str]]:
    """(key, channel) of every notification the receivers accepted."""
    accepted = {(key, channel) for channel in ("ops", "chat") for key in receiver.keys(f"/{channel}")}
    return accepted | {(str(m.message["X-PlantPulse-Delivery"]), "mail") for m in smtp.sink.messages}


def _ledger_rows(path: Path) -> set[tuple[str, str]]:
    """(key, channel) of every finished delivery in a notifier's ledger, read beside the running notifier."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return set(db.execute("SELECT delivery_key, channel FROM deliveries").fetchall())


def _rate_excess(arrivals: list[float], rate_per_s: float, burst: int, slack_s: float) -> list[tuple[int, float]]:
    """(count, seconds) of every stretch of arrivals holding more than burst + rate * (its length + slack).

    The bucket bounds when sends start; arrivals add scheduling jitter, hence the slack (0.2 s at 2/s is
    less than half a token: one send too many would still show)."""
    return [(j - i + 1, arrivals[j] - arrivals[i]) for i in range(len(arrivals)) for j in range(i, len(arrivals))
            if j - i + 1 > burst + rate_per_s * (arrivals[j] - arrivals[i] + slack_s)]


def test_exactly_once_per_channel_across_failures_and_a_kill(
    kafka_settings: Callable[..., Settings], receiver: Receiver, smtp: SmtpServer, tmp_path: Path
) -> None:
    """Real parts: `plantpulse notify` subprocesses (SIGKILLed mid-stream, restarted on the same ledger, then
    SIGTERMed), the embedded broker, an HTTP receiver failing the first requests (500, a hang past the client
    timeout, a dropped connection) and always failing one endpoint (503), an SMTP server with STARTTLS + AUTH
    refusing the first message (451). Asserted: every transition reaches exactly the channels the routes
    give it, once each; resolves are quiet unless asked; reminders repeat for an unacknowledged critical and
    stop after the ack; the always-failing channel dead-letters with its last error while the others deliver;
    the webhook's rate limit holds. The kill is made while the receivers hold new requests (their gates) and
    once the ledger holds everything they accepted, so no delivery is between its answer and its ledger
    write: that window is the one place a duplicate can come from, and the README says so."""
    settings = _settings(kafka_settings)
    ensure_topics(settings, 3, only={settings.incidents_topic: {}})
    routes = tmp_path / "notify.toml"
    routes.write_text(ROUTES)
    receiver.failures["/ops"] = ["500", "hang", "drop"]
    receiver.failures["/chat"] = ["500"]
    receiver.always["/broken"] = 503
    # The HTTP timeout is 2 s, not less: a receiver that answers after the notifier gave up has taken the
    # notification, and the retry is a real duplicate (the window the README describes); a loaded test machine
    # must not answer that slowly by accident. The planned "hang" outlasts it.
    env = {
        **os.environ, **smtp.env(),
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "INCIDENTS_TOPIC": settings.incidents_topic,
        "NOTIFY_DEADLETTER_TOPIC": settings.notify_deadletter_topic, "DATA_DIR": str(tmp_path / "data"),
        "NOTIFY_ROUTES_FILE": str(routes), "NOTIFY_MAX_ATTEMPTS": "4", "NOTIFY_BACKOFF_INITIAL_SECONDS": "0.05",
        "NOTIFY_BACKOFF_MAX_SECONDS": "0.2", "NOTIFY_HTTP_TIMEOUT_SECONDS": "2", "NOTIFY_METRICS_PORT": "0",
        "NOTIFY_TEST_OPS_URL": receiver.url("/ops"), "NOTIFY_TEST_CHAT_URL": receiver.url("/chat"),
        "NOTIFY_TEST_BROKEN_URL": receiver.url("/broken"),
    }
    env.pop("NOTIFY_TEST_UNSET_URL", None)
    log = tmp_path / "notify.log"

    a = Incident("M-A1", "overheat_critical", severity="critical", site="site-a")
    b = Incident("M-B1", "vibration_warning", severity="warning", site="site-b")
    c = Incident("M-A2", "pump-model", severity="warning", site="site-a", kind="anomaly")
    d = Incident("M-B2", "overheat_critical", severity="critical", site="site-b")  # left unacknowledged
    g = Incident("M-B7", "press-model", severity="critical", site="site-b", kind="anomaly")
    floods = [Incident(f"M-B{i}", "overheat_critical", severity="critical", site="site-b") for i in range(3, 7)]
    phase1 = [a.step("opened"), a.step("acknowledged", actor="ana"), b.step("opened"),
              b.step("escalated", severity="critical"), b.step("acknowledged"), c.step("opened"),
              c.step("commented", actor="bo", note="checking the bearing"), d.step("opened"), g.step("opened"),
              g.step("acknowledged")]
    phase1 += [r for f in floods for r in (f.step("opened"), f.step("acknowledged"))]
    _produce(settings, phase1)

    first = _notifier(env, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait(lambda: len(receiver.keys("/ops")) >= 3, "three webhook deliveries", first, log)
        receiver.gate.clear()
        smtp.sink.gate.clear()
        _wait(lambda: receiver.in_flight == 0, "the receiver's answers", first, log)
        accepted = _accepted(receiver, smtp)
        _wait(lambda: accepted <= _ledger_rows(tmp_path / "data" / "notify" / "ledger.sqlite"),
              "the ledger to record every accepted delivery", first, log)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        ops_before_kill = [k for k in receiver.keys("/ops") if "#remind-" not in k]
        receiver.gate.set()
        smtp.sink.gate.set()
        assert 3 <= len(ops_before_kill) < sum("ops" in expected_channels(r) for r in phase1)  # mid-stream

        second = _notifier(env, log)
        h = Incident("M-A4", "overheat_critical", severity="critical", site="site-a")
        e = Incident("M-A3", "temp_info", severity="info", site="site-a")
        phase2 = [a.step("resolved"), b.step("resolved"), c.step("resolved"), h.step("opened"),
                  h.step("acknowledged", actor="cy"), e.step("opened"), e.step("resolved")]
        _produce(settings, phase2)

        def reminders(path: str, incident: Incident) -> list[str]:
            return [k for k in receiver.keys(path) if k.startswith(f"{incident.id}#remind-")]

        _wait(lambda: len(reminders("/ops", d)) >= 2 and len(reminders("/chat", d)) >= 2, "two reminders", second,
              log)
        ack = d.step("acknowledged", actor="ana")
        _produce(settings, [ack])
        acked_at = time.monotonic()
        time.sleep(REMIND_MINUTES * 60 * 2.5)  # long enough for two more reminders, were they still sent
        resolve = d.step("resolved")
        _produce(settings, [resolve])
        records = phase1 + phase2 + [ack, resolve]
        expected = {ch: sorted(r["event_id"] for r in records if ch in expected_channels(r))
                    for ch in ("ops", "chat", "mail", "broken")}

        def transitions(path: str) -> list[str]:
            return sorted(k for k in receiver.keys(path) if "#remind-" not in k)

        def mail_keys() -> list[str]:
            return sorted(str(m.message["X-PlantPulse-Delivery"]) for m in smtp.sink.messages)

        def dead_letters() -> list[dict[str, Any]]:
            return [orjson.loads(m.value) for m in read_topic(settings, settings.notify_deadletter_topic)]

        _wait(lambda: set(transitions("/ops")) == set(expected["ops"]) and set(transitions("/chat")) ==
              set(expected["chat"]) and set(mail_keys()) == set(expected["mail"])
              and {x["delivery_key"] for x in dead_letters()} == set(expected["broken"]), "every delivery", second, log)
        time.sleep(1.0)  # a duplicate would arrive now
        stop_started = time.monotonic()
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0, log.read_text()[-3000:]  # a clean stop
        assert time.monotonic() - stop_started < 10
    finally:
        stop(first)
        if second is not None:
            stop(second)

    # Exactly once per channel, and only where the routes send it (quiet resolves included: c's resolve goes
    # nowhere, a's goes to ops/chat only, e is info and goes nowhere).
    assert transitions("/ops") == expected["ops"] and transitions("/chat") == expected["chat"]
    assert mail_keys() == expected["mail"]
    assert receiver.accepted["/broken"] == [] and len(receiver.arrivals["/broken"]) >= 4 * len(expected["broken"])

    # Reminders: repeated for d, each number once per channel, none after the ack was consumed; no other
    # incident was reminded of (each was acknowledged before its first reminder was due).
    for path in ("/ops", "/chat"):
        keys = [k for k in receiver.keys(path) if "#remind-" in k]
        assert all(count == 1 for count in Counter(keys).values()), keys
        assert {k.split("#remind-")[0] for k in keys} == {d.id}
        assert len(keys) >= 2
        late = [r.key for r in receiver.accepted[path] if "#remind-" in r.key and r.at > acked_at + 1.0]
        assert late == [], f"{path}: reminders after the acknowledgement: {late}"

    # The failing channel's transitions are dead letters with the last error; the other channels delivered
    # the same records (c opened: mail; g opened: ops and chat).
    letters = dead_letters()
    assert {x["delivery_key"] for x in letters} == set(expected["broken"])
    for letter in letters:
        assert letter["channel"] == "broken" and letter["reason"] == "delivery_failed"
        assert letter["attempts"] == 4 and letter["permanent"] is False and letter["error"].startswith("HTTP 503")
        assert letter["record"]["event_id"] == letter["delivery_key"]

    # Payload shapes: the webhook gets the record plus text; Slack gets {"text", "blocks"}; e-mail headers.
    first_ops = receiver.accepted["/ops"][0].body
    assert first_ops["event_id"] == first_ops["delivery_key"] and first_ops["text"].startswith("[CRITICAL] ")
    for request in receiver.accepted["/chat"]:
        assert set(request.body) == {"text", "blocks"}
        assert [block["type"] for block in request.body["blocks"]] == ["header", "section", "context"]
    for mail in smtp.sink.messages:
        assert sorted(mail.rcpt_tos) == ["lead-a@example.com", "oncall-a@example.com"]
        assert mail.message["From"] == "plantpulse@example.com"
        assert str(mail.message["Subject"]).startswith("[PlantPulse] [")

    # The webhook's rate limit, in each process's own run (a fresh process starts with a full bucket).
    arrivals = sorted(receiver.arrivals["/ops"])
    for run in ([t for t in arrivals if t < killed_at], [t for t in arrivals if t >= killed_at]):
        assert _rate_excess(run, OPS_RATE_PER_MINUTE / 60, OPS_BURST, slack_s=0.2) == [], run


def test_until_idle_log_channel_bad_records_and_a_second_run(
    kafka_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Real parts: two `plantpulse notify --routes FILE --until-idle 1` runs on the embedded broker with a log
    channel; records that are no transitions (not JSON, a missing field) are dead-lettered with where they
    were, the others logged once; the second run starts after the saved offsets and delivers nothing again."""
    settings = _settings(kafka_settings)
    routes = tmp_path / "routes.toml"
    routes.write_text(textwrap.dedent("""
        [channel.audit]
        type = "log"
        [[route]]
        channels = ["audit"]
        transitions = ["opened", "escalated", "acknowledged", "commented", "resolved"]
    """))
    incident = Incident("M-1", "overheat_critical", severity="critical", site="site-a")
    records = [incident.step("opened"), incident.step("commented", note="look"), incident.step("resolved")]
    broken = dict(records[0])
    del broken["severity"]
    ensure_topics(settings, 1, only={settings.incidents_topic: {}})
    _produce(settings, [records[0], b"{not json", orjson.dumps(broken), records[1], records[2]])
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "INCIDENTS_TOPIC": settings.incidents_topic, "NOTIFY_DEADLETTER_TOPIC": settings.notify_deadletter_topic,
           "NOTIFY_LEDGER_PATH": str(tmp_path / "ledger.sqlite"), "NOTIFY_METRICS_PORT": "0"}
    runs = []
    for _ in range(2):
        done = subprocess.run([PLANTPULSE, "notify", "--routes", str(routes), "--until-idle", "1"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(done.stderr)
    for record in records:
        assert runs[0].count(f"channel 'audit': {record['event_id']}: ") == 1
        assert record["event_id"] not in runs[1]
    letters = [orjson.loads(m.value) for m in read_topic(settings, settings.notify_deadletter_topic)]
    assert [(x["reason"], x["source_offset"]) for x in letters] == [("invalid_record", 1), ("invalid_record", 2)]
    assert "not JSON" in letters[0]["error"] and "'severity' is missing" in letters[1]["error"]


def test_a_route_using_an_unset_variable_stops_the_start(tmp_path: Path) -> None:
    """Real part: the `plantpulse notify` command; it names the channel and the variable and exits 2."""
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_TEST_")}
    done = subprocess.run([PLANTPULSE, "notify", "--routes", str(routes)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "channel 'ops'" in done.stderr and "NOTIFY_TEST_OPS_URL is not set" in done.stderr


def test_email_over_starttls_with_auth(smtp: SmtpServer, tmp_path: Path) -> None:
    """Real parts: aiosmtpd requiring STARTTLS (certificate from a trustme CA) and AUTH, and the e-mail sender
    set up from SMTP_* settings: delivered with its headers; a 4xx is retried, an untrusted certificate and a
    wrong password are permanent."""
    routes = tmp_path / "routes.toml"
    routes.write_text('[channel.mail]\ntype = "email"\nto = ["oncall@example.com"]\n[[route]]\nchannels = ["mail"]\n')
    routing = load_routing(routes)
    fields = {k.lower(): v for k, v in smtp.env().items()}
    sender = build_senders(routing, Settings(**fields))["mail"]
    record = Incident("M-9", "overheat_critical", severity="critical", site="site-a").step("opened")
    n = Notification(record["event_id"], record)
    with pytest.raises(DeliveryError, match="SMTP 451") as first:
        sender.send(n)  # the sink refuses the first message
    assert not first.value.permanent
    sender.send(n)
    (mail,) = smtp.sink.messages
    assert mail.rcpt_tos == ["oncall@example.com"] and mail.message["X-PlantPulse-Delivery"] == record["event_id"]
    assert mail.message["Subject"] == "[PlantPulse] [CRITICAL] Opened: overheat_critical on M-9 (pump, site-a)"
    for override, what in ((dict(smtp_password="wrong"), "SMTP 535"),
                           (dict(smtp_ca_file=None), "SSLCertVerificationError")):
        with pytest.raises(DeliveryError, match=what) as error:
            build_senders(routing, Settings(**{**fields, **override}))["mail"].send(n)
        assert error.value.permanent
    assert len(smtp.sink.messages) == 1
