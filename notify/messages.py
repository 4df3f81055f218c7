"""What a notification says: one human line, the webhook JSON, the Slack payload and the e-mail.

A notification is a transition record (`INCIDENT_ARROW_SCHEMA`, timestamps in epoch ms) or a reminder about
an incident that is still open; `key` is its idempotency key (the record's `event_id`, or
`<incident_id>#remind-<N>`), sent along (`Idempotency-Key` header, e-mail `Message-ID`) so that receivers
can drop the rare duplicate (see the README's Notifications section).
"""

from __future__ import annotations

import email.policy
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

_TITLES = {
    "opened": "Opened",
    "escalated": "Escalated",
    "acknowledged": "Acknowledged",
    "commented": "Comment",
    "resolved": "Resolved",
}
_SLACK_HEADER_MAX = 150  # Slack's limits for a header block's text and a section's text
_SLACK_SECTION_MAX = 3000


@dataclass(frozen=True)
class Notification:
    key: str  # the dedup key: the record's event_id, or "<incident_id>#remind-<N>"
    record: dict[str, Any]
    reminder: int | None = None  # N for the N-th reminder of an open, unacknowledged incident


def reminder_key(incident_id: str, number: int) -> str:
    return f"{incident_id}#remind-{number}"


def _iso(ms: object) -> str:
    if not isinstance(ms, int) or isinstance(ms, bool):
        return "?"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def title(n: Notification) -> str:
    """e.g. `Opened` or `Reminder 2`."""
    return f"Reminder {n.reminder}" if n.reminder is not None else _TITLES.get(n.record["transition"], "Update")


def subject_line(n: Notification) -> str:
    """`[CRITICAL] Opened: overheat_critical on M00042 (pump, site-a)`."""
    r = n.record
    where = ", ".join(part for part in (r["machine_type"], r["site"]) if part)
    return f"[{str(r['severity']).upper()}] {title(n)}: {r['rule_id']} on {r['machine_id']} ({where})"


def notification_text(n: Notification) -> str:
    """The one-line human text shared by every channel."""
    r = n.record
    transition = r["transition"]
    if n.reminder is not None:
        detail = f"still open and unacknowledged since {_iso(r.get('opened_at'))}: {r['message']}"
    elif transition == "opened":
        detail = str(r["message"])
    elif transition == "escalated":
        detail = f"now {r['severity']}: {r['message']}"
    elif transition == "acknowledged":
        detail = f"by {r.get('acknowledged_by') or r['actor']}" + (f": {r['note']}" if r.get("note") else "")
    elif transition == "commented":
        detail = f"{r['actor']}: {r['note']}"
    else:  # resolved
        detail = f"{r.get('resolved_reason') or 'resolved'} by {r.get('resolved_by') or r['actor']}" + (
            f": {r['note']}" if r.get("note") else ""
        )
    return f"{subject_line(n)}: {detail}"


def webhook_payload(n: Notification) -> dict[str, Any]:
    """The transition record as is, plus `text`, and what this notification is (`notification`, `reminder`,
    `delivery_key`)."""
    return {
        **n.record,
        "text": notification_text(n),
        "notification": "reminder" if n.reminder is not None else "transition",
        "reminder": n.reminder,
        "delivery_key": n.key,
    }


def _mrkdwn(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters (links, mentions); everything else is literal.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(n: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (the fallback shown in notifications) and Block Kit blocks."""
    r = n.record
    fields = [
        ("Severity", str(r["severity"])),
        ("Status", str(r["status"])),
        ("Machine", f"{r['machine_id']} ({r['machine_type']})"),
        ("Site", str(r["site"]) or "–"),
        ("Rule", f"{r['rule_id']} ({r['kind']})"),
        ("Sensor", f"{r['sensor']}: peak {r['peak_value']:g}, threshold {r['threshold']:g}"),
        ("Opened", _iso(r.get("opened_at"))),
        ("Detections", str(r["detections"])),
    ]
    return {
        "text": notification_text(n),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": subject_line(n)[:_SLACK_HEADER_MAX]}},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _mrkdwn(notification_text(n))[:_SLACK_SECTION_MAX]},
                "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{_mrkdwn(value)}"} for name, value in fields],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _mrkdwn(f"incident {r['incident_id']} · {n.key}")}],
            },
        ],
    }


def email_message(n: Notification, *, channel: str, sender: str, to: tuple[str, ...], prefix: str) -> EmailMessage:
    """The e-mail of a notification; its Message-ID is derived from (key, channel), so a duplicate that slips
    through the crash window carries the same Message-ID as the original."""
    r = n.record
    # Folding at 78 characters would break a long Subject right after "Subject:", which some readers show
    # with a leading space; RFC 5322's hard limit is 998.
    message = EmailMessage(policy=email.policy.default.clone(max_line_length=998))
    message["Subject"] = f"[{prefix}] {subject_line(n)}"
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = format_datetime(datetime.now(tz=UTC))
    digest = hashlib.sha256(f"{n.key}\0{channel}".encode()).hexdigest()[:40]
    message["Message-ID"] = f"<{digest}@plantpulse.notify>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    message["X-PlantPulse-Delivery"] = n.key
    message["X-PlantPulse-Incident"] = str(r["incident_id"])
    message["X-PlantPulse-Severity"] = str(r["severity"])
    lines = [notification_text(n), ""]
    for name in ("incident_id", "event_id", "transition", "status", "severity", "machine_id", "machine_type", "site",
                 "rule_id", "kind", "sensor", "peak_value", "threshold", "detections", "actor", "note"):
        lines.append(f"{name}: {r.get(name)}")
    for name in ("opened_at", "first_seen_ts", "last_seen_ts", "acknowledged_at", "resolved_at", "at"):
        if r.get(name) is not None:
            lines.append(f"{name}: {_iso(r.get(name))}")
    if n.reminder is not None:
        lines.append(f"reminder: {n.reminder}")
    message.set_content("\n".join(lines) + "\n")
    return message
