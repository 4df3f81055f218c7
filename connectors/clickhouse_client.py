"""Opening a ClickHouse client from `Settings.clickhouse_url`: embedded chDB (`chdb:///abs/path`) or a server.

chDB facts this module works around (measured with chDB 4.4 / engine 26.9):

- A data directory can be opened by one process at a time: the engine flock()s `<dir>/status`, and a
  second process gets only "Error initializing EmbeddedServer (BAD_ARGUMENTS)". `connect` turns that into
  `EmbeddedDatabaseBusy` with a message that says what to do.
- Within one process there is one engine: any number of clients may share its path (each has its own
  session state), but a client for a different path fails while any client of the first is open
  ("EmbeddedServer already initialized with path ..."); once all are closed another path can be opened.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.httputil import get_pool_manager
from urllib3 import PoolManager

from plantpulse.settings import Settings


class EmbeddedDatabaseBusy(RuntimeError):
    """The embedded chDB directory is held by another process (chDB allows one process per directory)."""

    def __init__(self, path: Path, holder_pid: int | None = None) -> None:
        holder = f" (pid {holder_pid})" if holder_pid else ""
        super().__init__(
            f"the embedded ClickHouse at {path} is in use by another process{holder} (a running flow or demo); "
            "stop it, or set CLICKHOUSE_URL to a ClickHouse server to query concurrently"
        )
        self.path = path
        self.holder_pid = holder_pid


class ClickHouseCertificateError(ValueError):
    """The https server's certificate cannot be verified: a configuration error, not an outage.

    A ValueError on purpose: the sink retries transient failures forever, and waiting does not make an
    untrusted certificate trusted - the flow stops with this message instead (CLICKHOUSE_CA_FILE is wrong or
    unset, or the certificate does not name the host in CLICKHOUSE_URL)."""


def connect(settings: Settings, database: str | None = None) -> Client:
    """A client for `settings.clickhouse_url`; `database` (must exist) becomes the default database.

    The PlantPulse database itself is created by `apply_schema`, so callers normally leave `database`
    unset and qualify table names.
    """
    url = settings.clickhouse_url
    scheme = urlsplit(url).scheme.lower()
    if scheme == "chdb":
        return _connect_embedded(embedded_path(url), database)
    if scheme in ("http", "https"):
        return _connect_server(settings, database)
    raise ValueError(f"CLICKHOUSE_URL={redacted_url(url)!r}: expected chdb:///absolute/path or http(s)://host:port")


def embedded_path(url: str) -> Path:
    """The directory of a `chdb:///abs/path` URL."""
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/"):
        raise ValueError(f"CLICKHOUSE_URL={url!r}: an embedded URL needs an absolute path, like chdb:///var/lib/plantpulse/chdb")
    return Path(parts.path)


def _connect_embedded(path: Path, database: str | None) -> Client:
    # chDB creates the directory itself but not missing parents (e.g. a fresh DATA_DIR).
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return clickhouse_connect.get_client(dsn=f"chdb://{path}", database=database)
    except Exception as exc:
        # The engine reports a locked directory only on stderr; the exception just says the embedded
        # server failed to start. Probe the lock to tell "busy" apart from other start-up failures.
        if "EmbeddedServer" in str(exc) and "already initialized" not in str(exc):
            holder = _lock_holder(path)
            if holder is not False:
                raise EmbeddedDatabaseBusy(path, holder) from None
        raise


def _lock_holder(path: Path) -> int | None | bool:
    """False if nobody holds `<path>/status`; else the holder's pid when readable, or None."""
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        # The status file starts with "PID: <n>" (written by the engine holding it).
        text = os.read(fd, 256).decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("PID:") and line[4:].strip().isdigit():
                return int(line[4:].strip())
        return None
    finally:
        os.close(fd)


def _connect_server(settings: Settings, database: str | None) -> Client:
    parts = urlsplit(settings.clickhouse_url)
    secure = parts.scheme.lower() == "https"
    if not parts.hostname:
        raise ValueError(f"CLICKHOUSE_URL={redacted_url(settings.clickhouse_url)!r}: no host")
    username = settings.clickhouse_user or parts.username or "default"
    if settings.clickhouse_password is not None:
        password = settings.clickhouse_password.get_secret_value()
    else:
        password = parts.password or ""
    try:
        return clickhouse_connect.get_client(
            interface="https" if secure else "http",
            host=parts.hostname,
            port=parts.port or (8443 if secure else 8123),
            username=username,
            password=password,
            database=database,
            # No server session: the sink's flusher thread and snapshot never share a client concurrently, and
            # sessions would make the server reject concurrent use instead of just running it.
            autogenerate_session_id=False,
            pool_mgr=tls_pool(settings),
        )
    except Exception as exc:
        if secure and _is_certificate_failure(exc):
            ca = settings.clickhouse_ca_file or "unset, so the system CAs"
            raise ClickHouseCertificateError(
                f"ClickHouse at {redacted_url(settings.clickhouse_url)}: the server's TLS certificate was not "
                f"accepted ({_certificate_reason(exc)}); CLICKHOUSE_CA_FILE={ca}: it must hold the CA that signed "
                "the server's certificate, and the certificate must name the host of CLICKHOUSE_URL"
            ) from exc
        raise


def tls_pool(settings: Settings) -> PoolManager | None:
    """The connection pool for CLICKHOUSE_VERIFY and CLICKHOUSE_CA_FILE (https only): None for the default
    (clickhouse-connect's shared pool, verifying against the system CAs), else a pool verifying as configured.

    A CA file with an http:// URL is refused rather than ignored: the operator asked for a verified,
    encrypted connection and would silently get a plaintext one.
    """
    url = settings.clickhouse_url
    ca_file = settings.clickhouse_ca_file
    if not url.lower().startswith("https://"):
        if ca_file is not None:
            raise ValueError(
                f"CLICKHOUSE_CA_FILE={ca_file} is set but CLICKHOUSE_URL={redacted_url(url)!r} is not https://: "
                "the connection would not be encrypted"
            )
        return None
    if ca_file is not None and not ca_file.is_file():
        raise ValueError(f"CLICKHOUSE_CA_FILE={ca_file} is not a readable file")
    if settings.clickhouse_verify and ca_file is None:
        return None
    return _tls_pool(settings.clickhouse_verify, str(ca_file) if ca_file is not None else None)


@functools.cache
def _tls_pool(verify: bool, ca_file: str | None) -> PoolManager:
    # clickhouse-connect's own `verify`/`ca_cert` arguments make each client own a new pool, and closing a
    # client then fails: urllib3-future (pulled in by grafana-client's niquests) replaces urllib3, and
    # clickhouse-connect 1.12's close needs `pools.lock`, which it lacks (AttributeError). A pool per TLS
    # configuration, shared like clickhouse-connect's default pool and closed by it at exit, avoids that.
    return get_pool_manager(verify=verify, ca_cert=ca_file)


def _is_certificate_failure(exc: BaseException) -> bool:
    # clickhouse-connect wraps urllib3's MaxRetryError(SSLError(SSLCertVerificationError)) in an
    # OperationalError; only the text survives all the way up.
    return any(isinstance(e, ssl.SSLCertVerificationError) for e in _chain(exc)) or (
        "CERTIFICATE_VERIFY_FAILED" in str(exc)
    )


def _certificate_reason(exc: BaseException) -> str:
    text = str(exc)
    start = text.find("certificate verify failed")
    if start < 0:
        return "certificate verify failed"
    return text[start:].split(" (_ssl.c", 1)[0].split("'", 1)[0]


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else (current.__cause__ or current.__context__)
    return seen


def redacted_url(url: str) -> str:
    """The URL without credentials, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{parts.username}:***@{host}{port}").geturl()
