"""`plantpulse notify` in pieces, in process: the routing file and its errors, channel set-up from the
environment, the messages (webhook JSON, Slack payload, e-mail), the token bucket, the ledger, the offset
tracker, record checks, and the HTTP error classification against a real local HTTP server."""

from __future__ import annotations

import re
import textwrap
import threading
from pathlib import Path

import orjson
import pytest

from notify.channels import ChannelConfigError, DeliveryError, HttpSender, build_senders
from notify.ledger import DELIVERED, Ledger, LedgerBusyError
from notify.messages import Notification, email_message, notification_text, slack_payload, webhook_payload
from notify.offsets import OffsetTracker
from notify.routing import RoutingFileError, load_routing
from notify.service import InvalidRecordError, parse_record
from notify.worker import TokenBucket
from plantpulse.settings import Settings
from tests.notifykit import Incident, Receiver, transition_record

ROOT = Path(__file__).resolve().parents[1]

CHANNELS = """
[channel.ops]
type = "webhook"
url_env = "OPS_URL"
[channel.chat]
type = "slack"
url_env = "CHAT_URL"
rate_per_minute = 30
[channel.mail]
type = "email"
to = ["a@example.com"]
[channel.audit]
type = "log"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "notify.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("body", "where", "what"),
    [
        ('[[route]]\nchannels = ["pager"]', "route 'route #1'", "field 'channels' names 'pager'"),
        ('[[route]]\nname = "crit"\nseverity = ["urgent"]\nchannels = ["ops"]', "route 'crit'", "field 'severity'"),
        ('[[route]]\nname = "k"\nkind = ["both"]\nchannels = ["ops"]', "route 'k'", "field 'kind'"),
        ('[[route]]\nname = "t"\nchannels = ["ops"]\nnotify_on_resolved = true', "route 't'", "notify_on_resolved"),
        ('[[route]]\nname = "s"\nsite = "site-a"\nchannels = ["ops"]', "route 's'", "field 'site' must be a list"),
        ('[[route]]\nname = "e"\nsite = []\nchannels = ["ops"]', "route 'e'", "field 'site' is empty"),
        ('[[route]]\nname = "c"\nchannels = []', "route 'c'", "field 'channels'"),
        ('[[route]]\nname = "r"\nchannels = ["ops"]\nremind_every_minutes = 0', "route 'r'", "remind_every_minutes"),
        ('[[route]]\nname = "x"\nchannels = ["ops"]\ntransitions = ["closed"]', "route 'x'", "field 'transitions'"),
        ('[[route]]\nname = "q"\nchannels = ["ops"]\ntransitions = ["resolved"]\nnotify_on_resolve = false',
         "route 'q'", "notify_on_resolve"),
        ('[[route]]\nname = "d"\nchannels = ["ops"]\n[[route]]\nname = "d"\nchannels = ["chat"]', "", "duplicate"),
        ("", "", "no [[route]]"),
    ],
)
def test_route_errors_name_file_route_and_field(tmp_path: Path, body: str, where: str, what: str) -> None:
    """Real part: the routing-file loader on files written here; each error names file, route and field."""
    path = _write(tmp_path, CHANNELS + body)
    with pytest.raises(RoutingFileError) as error:
        load_routing(path)
    assert str(path) in str(error.value) and where in str(error.value) and what in str(error.value)


@pytest.mark.parametrize(
    ("channel", "what"),
    [
        ('type = "webhook"\nurl = "https://hooks.example.com/x"', "unknown field(s) ['url']"),
        ('type = "webhook"', "field 'url_env'"),
        ('type = "slack"\nurl_env = "https://hooks.slack.com/x"', "field 'url_env'"),
        ('type = "pager"', "field 'type'"),
        ('type = "email"\nto = []', "field 'to'"),
        ('type = "email"\nto = ["nobody"]', "field 'to'"),
        ('type = "log"\nburst = 3', "field 'burst' needs 'rate_per_minute'"),
        ('type = "log"\nrate_per_minute = -1', "field 'rate_per_minute'"),
        ('type = "log"\nrate_per_minute = 10\nburst = 0', "field 'burst'"),
    ],
)
def test_channel_errors_name_file_channel_and_field(tmp_path: Path, channel: str, what: str) -> None:
    """Real part: the routing-file loader; each channel error names file, channel and field."""
    path = _write(tmp_path, f'[channel.bad]\n{channel}\n[[route]]\nchannels = ["bad"]\n')
    with pytest.raises(RoutingFileError) as error:
        load_routing(path)
    assert str(path) in str(error.value) and "channel 'bad'" in str(error.value) and what in str(error.value)


def test_unreadable_file_and_toml_syntax(tmp_path: Path) -> None:
    """Real part: the loader on a missing file and on broken TOML."""
    with pytest.raises(RoutingFileError, match="missing.toml"):
        load_routing(tmp_path / "missing.toml")
    with pytest.raises(RoutingFileError, match=r"notify.toml.*line 1"):
        load_routing(_write(tmp_path, "[[route]\n"))


def test_matching_defaults_resolve_and_reminders(tmp_path: Path) -> None:
    """Real part: routing on transitions built from the schema: defaults, quiet resolves, reminder intervals."""
    routing = load_routing(_write(tmp_path, CHANNELS + """
        [[route]]
        name = "critical"
        severity = ["critical"]
        channels = ["ops", "chat"]
        remind_every_minutes = 10
        [[route]]
        name = "site-a"
        site = ["site-a"]
        machine_type = ["pump", "press"]
        channels = ["mail", "chat"]
        notify_on_resolve = true
        remind_every_minutes = 2
        [[route]]
        name = "audit"
        channels = ["audit"]
        transitions = ["acknowledged", "commented"]
    """))
    incident = Incident("M1", "overheat", severity="critical", site="site-a")
    opened = incident.step("opened")
    assert routing.channels_for(opened) == ["ops", "chat", "mail"]
    assert routing.channels_for(incident.step("acknowledged")) == ["audit"]
    assert routing.channels_for(incident.step("commented", note="on it")) == ["audit"]
    assert routing.channels_for(incident.step("resolved")) == ["mail", "chat"]  # only site-a asked for resolves
    other = Incident("M2", "overheat", severity="warning", site="site-b", machine_type="pump").step("opened")
    assert routing.channels_for(other) == []
    assert routing.channels_for({**other, "machine_type": "fan", "site": "site-a"}) == []
    assert routing.reminders_for(opened) == {"ops": 600.0, "chat": 120.0, "mail": 120.0}  # the shortest interval


def test_packaged_file_is_the_default_and_runs_without_variables() -> None:
    """Real parts: the packaged notify.toml and Settings' default; no environment variable is needed."""
    settings = Settings()
    routing = load_routing(settings.notify_routes_file)
    assert settings.notify_routes_file == ROOT / "plantpulse" / "config" / "notify.toml"
    assert {c.type for c in routing.channels.values()} == {"webhook", "slack", "email", "log"}
    assert set(build_senders(routing, settings, environ={})) == {"audit-log"}  # only the used channel is set up


def test_readme_example_is_valid(tmp_path: Path) -> None:
    """Real part: the README's routing example, parsed by the loader."""
    section = (ROOT / "README.md").read_text().split("## Notifications", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    routing = load_routing(_write(tmp_path, example.group(1)))
    assert routing.routes


def test_channels_come_from_the_environment(tmp_path: Path) -> None:
    """Real part: channel set-up from a given environment; errors name channel, route and variable."""
    routing = load_routing(_write(tmp_path, CHANNELS + """
        [[route]]
        name = "critical"
        channels = ["ops", "mail"]
    """))
    settings = Settings(smtp_host="127.0.0.1", smtp_from="pp@example.com")
    with pytest.raises(ChannelConfigError) as error:
        build_senders(routing, settings, environ={})
    assert "channel 'ops'" in str(error.value) and "OPS_URL is not set" in str(error.value)
    assert "critical" in str(error.value)
    with pytest.raises(ChannelConfigError, match="OPS_URL does not hold an http"):
        build_senders(routing, settings, environ={"OPS_URL": "hooks.example.com/secret-token"})
    with pytest.raises(ChannelConfigError, match="channel 'mail'.*SMTP_HOST is not set"):
        build_senders(routing, Settings(), environ={"OPS_URL": "https://hooks.example.com/x"})
    senders = build_senders(routing, settings, environ={"OPS_URL": "https://hooks.example.com/x"})
    assert {name: s.type for name, s in senders.items()} == {"ops": "webhook", "mail": "email"}  # chat: unused


def test_messages_webhook_slack_and_email() -> None:
    """Real parts: the webhook JSON, the Slack payload and the e-mail (headers, subject) of schema-built records."""
    incident = Incident("M00042", "overheat_critical", severity="critical", site="site-a")
    record = incident.step("opened")
    n = Notification(record["event_id"], record)
    assert notification_text(n).startswith("[CRITICAL] Opened: overheat_critical on M00042 (pump, site-a): ")

    body = webhook_payload(n)
    assert {k: body[k] for k in record} == record  # the record as is ...
    assert body["text"] == notification_text(n) and body["notification"] == "transition"  # ... plus the text

    record = incident.step("acknowledged", actor="ana", note="<b>on it</b> & coming")
    slack = slack_payload(Notification(record["event_id"], record))
    assert set(slack) == {"text", "blocks"}
    assert "Acknowledged: overheat_critical on M00042 (pump, site-a): by ana" in slack["text"]
    assert [b["type"] for b in slack["blocks"]] == ["header", "section", "context"]
    assert slack["blocks"][0]["text"]["type"] == "plain_text" and len(slack["blocks"][0]["text"]["text"]) <= 150
    section = slack["blocks"][1]
    assert section["text"]["type"] == "mrkdwn" and "&lt;b&gt;on it&lt;/b&gt; &amp; coming" in section["text"]["text"]
    assert 1 <= len(section["fields"]) <= 10 and all(f["type"] == "mrkdwn" for f in section["fields"])
    assert record["event_id"] in slack["blocks"][2]["elements"][0]["text"]

    reminder = Notification(f"{incident.id}#remind-2", record | {"status": "open"}, reminder=2)
    mail = email_message(reminder, channel="mail", sender="pp@example.com", to=("a@example.com", "b@example.com"),
                         prefix="PlantPulse")
    assert mail["Subject"] == "[PlantPulse] [CRITICAL] Reminder 2: overheat_critical on M00042 (pump, site-a)"
    assert mail["To"] == "a@example.com, b@example.com" and mail["From"] == "pp@example.com"
    assert mail["X-PlantPulse-Delivery"] == f"{incident.id}#remind-2" and mail["Auto-Submitted"] == "auto-generated"
    again = email_message(reminder, channel="mail", sender="x@example.com", to=("c@example.com",), prefix="P")
    assert mail["Message-ID"] == again["Message-ID"]  # derived from (key, channel): a duplicate is recognisable
    assert "still open and unacknowledged" in mail.get_content()


def test_token_bucket_bounds_any_interval() -> None:
    """Real part: the token bucket on a simulated clock: at most burst + rate x T in any stretch T."""
    now = [0.0]
    bucket = TokenBucket(rate_per_minute=60, burst=3, clock=lambda: now[0])
    sent: list[float] = []
    while now[0] < 20:  # a sender that always has something to send
        wait = bucket.take()
        if wait == 0:
            sent.append(now[0])
        else:
            now[0] += wait
    assert sent[:3] == [0.0, 0.0, 0.0]  # the burst
    for i, start in enumerate(sent):
        for j in range(i, len(sent)):
            assert j - i + 1 <= 3 + (sent[j] - start) * 1.0 + 1e-9
    assert 20 <= len(sent) <= 23
    stop = threading.Event()
    assert TokenBucket(1, 1).acquire(stop)
    stop.set()
    assert TokenBucket(1, 1).acquire(stop) is False  # stopping: no send starts, nothing blocks


def test_ledger_dedup_offsets_incidents_and_lock(tmp_path: Path) -> None:
    """Real parts: the SQLite ledger file, closed and reopened, and its lock against a second notifier."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    with pytest.raises(LedgerBusyError, match="in use"):
        Ledger(path)
    incident = Incident("M1", "r", severity="critical", site="a")
    opened, acked = incident.step("opened"), incident.step("acknowledged")
    ledger.finish(opened["event_id"], "ops", DELIVERED, 2, None, incident.id)
    ledger.save_offsets("incidents", {0: 5, 1: 7})
    ledger.save_incidents([opened])
    assert list(ledger.open_incidents()) == [incident.id]
    ledger.save_incidents([acked, opened])  # an older version consumed late changes nothing
    ledger.close()
    reopened = Ledger(path)
    assert reopened.is_done(opened["event_id"], "ops") and not reopened.is_done(opened["event_id"], "mail")
    assert reopened.outcome(opened["event_id"], "ops") == (DELIVERED, 2, None)
    assert reopened.offsets("incidents") == {0: 5, 1: 7} and reopened.offsets("other") == {}
    assert reopened.open_incidents() == {} and reopened.incident_versions() == {incident.id: 2}
    reopened.close()


def test_offsets_wait_for_the_oldest_unfinished_record() -> None:
    """Real part: the offset tracker: a partition's offset waits for its oldest unfinished record."""
    tracker = OffsetTracker({0: 10, 1: 0})
    tracker.consumed(0, 10, 2)
    tracker.consumed(0, 11, 0)
    tracker.consumed(0, 12, 1)
    assert tracker.committable() == {0: 10, 1: 0}
    tracker.finished(0, 12)
    tracker.finished(0, 10)
    assert tracker.committable() == {0: 10, 1: 0}  # one of offset 10's two deliveries is still out
    tracker.finished(0, 10)
    assert tracker.committable() == {0: 13, 1: 0} and tracker.unfinished_records() == 0


def test_record_checks_follow_the_schema() -> None:
    """Real part: the record check, derived from INCIDENT_ARROW_SCHEMA."""
    record = Incident("M1", "r", severity="warning", site="a").step("opened")
    assert parse_record(orjson.dumps(record)) == record
    for broken, what in [
        ({k: v for k, v in record.items() if k != "severity"}, "'severity' is missing"),
        (record | {"opened_at": "2026-01-01"}, "'opened_at'"),
        (record | {"peak_value": "high"}, "'peak_value'"),
        (record | {"transition": "closed"}, "'transition'"),
    ]:
        with pytest.raises(InvalidRecordError, match=what):
            parse_record(orjson.dumps(broken))
    with pytest.raises(InvalidRecordError, match="not JSON"):
        parse_record(b"{oops")
    with pytest.raises(KeyError):
        transition_record(not_a_field=1)


def test_http_errors_are_classified_against_a_real_server() -> None:
    """A real ThreadingHTTPServer answers each status; the sender's errors say whether a retry can help."""
    receiver = Receiver(hang_s=1.0)
    receiver.always.update({"/404": 404, "/408": 408, "/429": 429, "/500": 500, "/302": 302})
    receiver.failures["/hang"] = ["hang"]
    receiver.failures["/drop"] = ["drop"]
    record = Incident("M1", "r", severity="critical", site="a").step("opened")
    n = Notification(record["event_id"], record)
    try:
        outcomes = {}
        for path in ("/404", "/408", "/429", "/500", "/302", "/hang", "/drop"):
            with pytest.raises(DeliveryError) as error:
                HttpSender("t", "webhook", receiver.url(path), timeout_s=0.3).send(n)
            outcomes[path] = error.value.permanent
            assert receiver.url(path) not in str(error.value)  # URLs are secrets: never in errors or logs
        assert outcomes == {"/404": True, "/408": False, "/429": False, "/500": False, "/302": True,
                            "/hang": False, "/drop": False}
        HttpSender("t", "webhook", receiver.url("/ok"), timeout_s=1).send(n)
        assert receiver.keys("/ok") == [record["event_id"]]
    finally:
        receiver.close()
    with pytest.raises(DeliveryError, match="connection failed") as refused:
        HttpSender("t", "webhook", receiver.url("/gone"), timeout_s=1).send(n)
    assert not refused.value.permanent
