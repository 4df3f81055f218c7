"""Test parts for `plantpulse notify`: incident transition records built from the schema, a real HTTP receiver
that fails on purpose, and a real SMTP server (aiosmtpd) with STARTTLS from a throwaway CA (trustme)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from connectors.broker import free_port
from plantpulse.schema import INCIDENT_ARROW_SCHEMA

_STATUS_AFTER = {"opened": "open", "acknowledged": "acknowledged", "resolved": "resolved"}


def transition_record(**values: Any) -> dict[str, Any]:
    """A transition record with every field of `INCIDENT_ARROW_SCHEMA` (timestamps as epoch ms): `values`
    where given, else a neutral value of the field's type (null where nullable). Unknown names are an error,
    so the tests follow the schema when it changes."""
    unknown = sorted(set(values) - set(INCIDENT_ARROW_SCHEMA.names))
    if unknown:
        raise KeyError(f"transition_record: {unknown} are not fields of INCIDENT_ARROW_SCHEMA")
    now_ms = int(time.time() * 1000)
    record: dict[str, Any] = {}
    for f in INCIDENT_ARROW_SCHEMA:
        if f.nullable:
            record[f.name] = None
        elif pa.types.is_timestamp(f.type):
            record[f.name] = now_ms
        elif pa.types.is_string(f.type):
            record[f.name] = ""
        elif pa.types.is_integer(f.type):
            record[f.name] = 1
        else:
            record[f.name] = 0.0
    return {**record, **values}


class Incident:
    """One incident's successive transitions, as the flow would publish them."""

    def __init__(self, machine_id: str, rule_id: str, *, severity: str, site: str, kind: str = "threshold",
                 machine_type: str = "pump") -> None:
        opened_ms = int(time.time() * 1000)
        self.id = f"{machine_id}/{rule_id}/{opened_ms - opened_ms % 10_000}"
        self.version = 0
        self.state: dict[str, Any] = dict(
            incident_id=self.id, machine_id=machine_id, machine_type=machine_type, site=site, rule_id=rule_id,
            kind=kind, severity=severity, sensor="temperature", peak_value=97.5, threshold=95.0,
            message=f"temperature 97.5 > 95 on {machine_id}", opened_at=opened_ms, actor="plantpulse",
        )

    def step(self, transition: str, **changes: Any) -> dict[str, Any]:
        self.version += 1
        self.state.update(changes)
        self.state["status"] = _STATUS_AFTER.get(transition, self.state.get("status", "open"))
        if transition == "acknowledged":
            self.state.update(acknowledged_by=changes.get("actor", "ana"), acknowledged_at=int(time.time() * 1000))
        if transition == "resolved":
            self.state.update(resolved_by="plantpulse", resolved_at=int(time.time() * 1000), resolved_reason="quiet")
        return transition_record(**self.state, version=self.version, event_id=f"{self.id}#{self.version}",
                                 transition=transition, at=int(time.time() * 1000))


@dataclass
class Request:
    at: float  # time.monotonic() of arrival
    key: str
    body: dict[str, Any]


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST by path.

    `failures[path]` lists how the next requests to that path fail: "500", "hang" (no answer until the
    client timed out, then the connection closes) or "drop" (closed without an answer); `always[path]` is a
    status every request gets. While `gate` is clear, new requests wait and are then refused (503),
    unrecorded: a test closes it, waits for `in_flight` to reach 0 and for the notifier's ledger to hold what
    was accepted, and kills the notifier then, when no delivery is between its answer and its ledger write.
    """

    hang_s: float = 1.0
    accepted: dict[str, list[Request]] = field(default_factory=lambda: defaultdict(list))
    arrivals: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, list[str]] = field(default_factory=dict)
    always: dict[str, int] = field(default_factory=dict)
    gate: threading.Event = field(default_factory=threading.Event)
    in_flight: int = 0  # requests let through the gate and not answered yet

    def __post_init__(self) -> None:
        self.gate.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def keys(self, path: str) -> list[str]:
        with self._lock:
            return [r.key for r in self.accepted[path]]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        path = handler.path
        with self._lock:
            self.arrivals[path].append(arrived)
            plan = self.failures.get(path)
            mode = plan.pop(0) if plan else None
            gated = not self.gate.is_set()
            self.in_flight += 0 if gated else 1
        if gated:
            self.gate.wait()
            self._answer(handler, 503)
            return
        try:
            self._serve(handler, path, mode, arrived, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _serve(self, handler: BaseHTTPRequestHandler, path: str, mode: str | None, arrived: float,
               body: bytes) -> None:
        mode = mode or (str(self.always[path]) if path in self.always else None)
        if mode == "hang":
            time.sleep(self.hang_s)
            handler.close_connection = True
            return
        if mode == "drop":
            handler.close_connection = True
            return
        if mode is not None:
            self._answer(handler, int(mode))
            return
        with self._lock:
            self.accepted[path].append(Request(arrived, handler.headers["Idempotency-Key"], orjson.loads(body)))
        self._answer(handler, 200)

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        except (BrokenPipeError, ConnectionResetError):  # a killed notifier's request, answered after the gate
            handler.close_connection = True

    def close(self) -> None:
        self.gate.set()
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Mail:
    at: float
    rcpt_tos: list[str]
    message: EmailMessage


class MailSink:
    """aiosmtpd handler: records each message; `fail_first` messages get 451 (try again later); `gate` as in
    `Receiver`."""

    def __init__(self, fail_first: int = 0) -> None:
        self.messages: list[Mail] = []
        self.fail_first = fail_first
        self.gate = threading.Event()
        self.gate.set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.gate.is_set():
            while not self.gate.is_set():
                await asyncio.sleep(0.05)
            return "451 4.3.0 closed for the test"
        if self.fail_first > 0:
            self.fail_first -= 1
            return "451 4.3.0 try again later"
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(Mail(time.monotonic(), list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
        return "250 2.0.0 OK"


SMTP_USER, SMTP_PASSWORD = "notifier", "s3cret-pw"


@dataclass
class SmtpServer:
    host: str
    port: int
    ca_file: Path
    sink: MailSink

    def env(self) -> dict[str, str]:
        return {"SMTP_HOST": self.host, "SMTP_PORT": str(self.port), "SMTP_FROM": "plantpulse@example.com",
                "SMTP_USERNAME": SMTP_USER, "SMTP_PASSWORD": SMTP_PASSWORD, "SMTP_STARTTLS": "true",
                "SMTP_CA_FILE": str(self.ca_file), "SMTP_TIMEOUT_SECONDS": "3"}


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(), SMTP_PASSWORD.encode())
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535 itself


def smtp_server(directory: Path, sink: MailSink) -> Iterator[SmtpServer]:
    """A real SMTP server on 127.0.0.1 that requires STARTTLS (certificate from a fresh trustme CA, written
    to `directory/ca.pem`) and AUTH before accepting mail; stopped when the generator closes."""
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd warns about its own legacy attribute
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), tls_context=context, require_starttls=True,
                            authenticator=_authenticate, auth_required=True)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", controller.port, ca_file, sink)
    finally:
        sink.gate.set()
        controller.stop()
