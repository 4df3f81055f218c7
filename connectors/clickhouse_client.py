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
import os
from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

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
    )


def redacted_url(url: str) -> str:
    """The URL without credentials, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{parts.username}:***@{host}{port}").geturl()
