"""Test parts for transport encryption: a throwaway CA (trustme), TLS on any socketserver-based server with a
record of every handshake, an imitation of ClickHouse's HTTP interface, a Kafka listener that speaks just
enough of the protocol to see what a client sends after TLS, and moto's S3 server over https."""

from __future__ import annotations

import socket
import socketserver
import ssl
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme
from cryptography.hazmat.primitives import serialization

HOSTS = ("127.0.0.1", "localhost")
KEY_PASSWORD = "client-key-passphrase"


@dataclass
class Pki:
    """A fresh CA and the files clients are configured with: `ca_file`, and a client certificate/key pair
    (`client_cert`, `client_key`; `encrypted_client_key` is the same key protected by `KEY_PASSWORD`) for
    mutual TLS. `other_ca_file` is a second CA that signed nothing here:
    "some CA bundle, but the wrong one"."""

    directory: Path
    ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.other_ca_file = self.directory / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(self.other_ca_file))
        client = self.ca.issue_cert("plantpulse-flow@example.com", common_name="plantpulse-flow")
        self.client_cert, self.client_key = self.directory / "client.pem", self.directory / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
        self.encrypted_client_key = self.directory / "client-encrypted.key"
        self.encrypted_client_key.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode())))

    def server_context(self, *hosts: str, require_client_cert: bool = False) -> ssl.SSLContext:
        """A server context with a certificate for `hosts` (default 127.0.0.1 and localhost)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*(hosts or HOSTS)).configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(context)
        return context


@dataclass
class Handshake:
    ok: bool
    detail: str  # the error on failure; the client certificate's subject CN (or "") on success


@dataclass
class TlsLog:
    handshakes: list[Handshake] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [h.detail for h in self.handshakes if not h.ok]

    @property
    def successes(self) -> list[Handshake]:
        return [h for h in self.handshakes if h.ok]


def serve_tls(server: socketserver.TCPServer, context: ssl.SSLContext) -> TlsLog:
    """Make `server` (already serving or not) speak TLS on every new connection and log each handshake.

    Wrapping per accepted connection, not the listening socket, lets the log see failed handshakes, which
    socketserver would otherwise swallow.
    """
    log = TlsLog()
    plain_accept = server.socket.accept

    def get_request() -> tuple[Any, Any]:
        connection, address = plain_accept()
        connection.settimeout(5)  # a client that never finishes its handshake must not stall the server
        try:
            wrapped = context.wrap_socket(connection, server_side=True)
        except (ssl.SSLError, OSError) as error:
            log.handshakes.append(Handshake(False, f"{type(error).__name__}: {error}"))
            connection.close()
            raise
        wrapped.settimeout(None)
        peer = wrapped.getpeercert() or {}
        subject = dict(item for rdn in peer.get("subject", ()) for item in rdn)
        log.handshakes.append(Handshake(True, str(subject.get("commonName", ""))))
        return wrapped, address

    server.get_request = get_request  # type: ignore[method-assign]
    return log


# --- ClickHouse's HTTP interface, as much as clickhouse-connect needs to create a client ---

CLICKHOUSE_VERSION = "26.9.1.1"


@dataclass
class ClickHouseImitation:
    """A ThreadingHTTPServer on 127.0.0.1 answering the queries clickhouse-connect sends when it creates a
    client (clickhouse_connect/driver/_backend/orchestration.py `init_sequence`): `SELECT version(),
    timezone()` as TabSeparated, and an empty Native result for `system.settings` and the protocol probe.
    It records each request's SQL and Authorization header. It runs no SQL: it proves the connection,
    not the engine (the engine's tests use embedded chDB)."""

    context: ssl.SSLContext
    queries: list[str] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        imitation = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sql = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                imitation.queries.append(sql)
                imitation.authorizations.append(self.headers.get("Authorization", ""))
                body = f"{CLICKHOUSE_VERSION}\tUTC\n".encode() if sql.startswith("SELECT version()") else b""
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.tls = serve_tls(self._server, self.context)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- A Kafka listener: TLS, then ApiVersions, SaslHandshake and the first SaslAuthenticate ---

_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE, _METADATA = 18, 17, 36, 3
_ADVERTISED = ((_API_VERSIONS, 0, 3), (_SASL_HANDSHAKE, 0, 1), (_SASL_AUTHENTICATE, 0, 1), (_METADATA, 0, 4))
_SASL_AUTHENTICATION_FAILED = 58


@dataclass
class KafkaRequest:
    client_id: str
    api_key: int
    body: bytes  # after the request header (flexible headers' tagged fields not stripped: unused here)


@dataclass
class KafkaTlsListener:
    """A TCP listener on 127.0.0.1 that does TLS (optionally requiring a client certificate) and then speaks
    the first steps of the Kafka protocol a real librdkafka client sends: ApiVersions is answered, a SASL
    handshake is accepted, and the first SaslAuthenticate (the SCRAM client-first message, which carries the
    user name) is recorded and refused, so the client never gets further. It imitates no broker beyond that:
    the embedded broker of the other tests (tansu) cannot do TLS here."""

    context: ssl.SSLContext
    requests: list[KafkaRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                listener._converse(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.tls = serve_tls(self._server, self.context)
        self.bootstrap = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def sasl(self, client_id_prefix: str = "") -> list[tuple[str, bytes]]:
        """(mechanism or first SCRAM message) pairs seen from clients whose id starts with the prefix."""
        wanted = {_SASL_HANDSHAKE: "handshake", _SASL_AUTHENTICATE: "authenticate"}
        return [(wanted[r.api_key], r.body) for r in list(self.requests)
                if r.api_key in wanted and r.client_id.startswith(client_id_prefix)]

    def _converse(self, connection: socket.socket) -> None:
        while True:
            size_bytes = _read_exactly(connection, 4)
            if size_bytes is None:
                return
            frame = _read_exactly(connection, struct.unpack(">i", size_bytes)[0])
            if frame is None:
                return
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            id_length = struct.unpack(">h", frame[8:10])[0]
            client_id = frame[10 : 10 + max(id_length, 0)].decode()
            body = frame[10 + max(id_length, 0) :]
            self.requests.append(KafkaRequest(client_id, api_key, body))
            answer = self._answer(api_key, version, body)
            if answer is None:
                return  # anything else (Metadata after a plain SSL connect): close, the record is all we want
            connection.sendall(struct.pack(">ii", len(answer) + 4, correlation) + answer)
            if api_key == _SASL_AUTHENTICATE:
                return

    @staticmethod
    def _answer(api_key: int, version: int, body: bytes) -> bytes | None:
        if api_key == _API_VERSIONS:
            if version >= 3:  # flexible: compact array (length + 1), tagged fields after each entry
                entries = b"".join(struct.pack(">hhh", *a) + b"\x00" for a in _ADVERTISED)
                return struct.pack(">hB", 0, len(_ADVERTISED) + 1) + entries + struct.pack(">i", 0) + b"\x00"
            entries = b"".join(struct.pack(">hhh", *a) for a in _ADVERTISED)
            return struct.pack(">hi", 0, len(_ADVERTISED)) + entries + (struct.pack(">i", 0) if version else b"")
        if api_key == _SASL_HANDSHAKE:
            (length,) = struct.unpack(">h", body[:2])
            mechanism = body[2 : 2 + length]
            return struct.pack(">hih", 0, 1, len(mechanism)) + mechanism
        if api_key == _SASL_AUTHENTICATE:
            message = b"tlskit: authentication stops here"
            tail = struct.pack(">q", 0) if version >= 1 else b""
            return struct.pack(">hh", _SASL_AUTHENTICATION_FAILED, len(message)) + message + struct.pack(">i", 0) + tail
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _read_exactly(connection: socket.socket, size: int) -> bytes | None:
    chunks = b""
    while len(chunks) < size:
        try:
            chunk = connection.recv(size - len(chunks))
        except OSError:
            return None
        if not chunk:
            return None
        chunks += chunk
    return chunks


# --- moto's S3 over https ---


@contextmanager
def moto_s3_https(context: ssl.SSLContext) -> Iterator[tuple[str, TlsLog]]:
    """(https endpoint URL, handshake log) of moto's S3 server (werkzeug, as `moto.server` runs it) on a free
    port of 127.0.0.1. `ThreadedMotoServer` takes no TLS context, so the same app is served here."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=MotoRequestHandler)
    log = serve_tls(server, context)
    server.ssl_context = context  # werkzeug reads it only to tell the app the scheme is https
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
