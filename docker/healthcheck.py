"""The container image's HEALTHCHECK: probes what this container's role serves (one image runs every role).

The role is the `plantpulse` subcommand the container runs, read from PID 1's command line (`python
/usr/local/bin/plantpulse run`, or `docker-init -- plantpulse run` with `init: true`):
- `run` (the flow): GET http://127.0.0.1:$METRICS_PORT/ready; 200 once this process consumes (its Kafka
  partitions assigned and a recent poll), 503 with the reason otherwise.
- `notify`: GET http://127.0.0.1:$NOTIFY_METRICS_PORT/metrics.
- `sim`: the simulator has written the fleet metadata ($MACHINES_FILE) and, with DEVICE_AUTH=required, the
  device key registry ($DEVICE_KEYS_FILE): the files the flow reads.
- any other role (one-shot commands such as `topics ensure` or `sql migrate`), or a port set to 0: healthy,
  nothing to probe.
Exit 0 when healthy, 1 when not, with one line on stdout (`docker inspect` shows it).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from plantpulse.settings import Settings

TIMEOUT_SECONDS = 3.0


def role_of(argv: Sequence[str]) -> str | None:
    """The subcommand after the `plantpulse` executable in a command line, or None if it is not one."""
    for index, arg in enumerate(argv):
        if Path(arg).name == "plantpulse":
            return argv[index + 1] if index + 1 < len(argv) else None
    return None


def container_role(proc: Path = Path("/proc")) -> str | None:
    """The role of the container's main process (PID 1; `docker-init -- plantpulse run` with `init: true`)."""
    try:
        raw = (proc / "1" / "cmdline").read_bytes()
    except OSError:
        return None
    return role_of(raw.rstrip(b"\0").decode(errors="replace").split("\0"))


def probe_http(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return True, f"{url}: {response.status}"
    except urllib.error.HTTPError as error:
        reason = error.read(200).decode(errors="replace").strip()
        return False, f"{url}: {error.code} {reason}".rstrip()
    except (urllib.error.URLError, OSError) as error:
        return False, f"{url}: {getattr(error, 'reason', error)}"


def check(role: str | None, settings: Settings) -> tuple[bool, str]:
    """(healthy, one-line reason) for a container running `plantpulse <role>`."""
    if role == "run":
        if settings.metrics_port == 0:
            return True, "run: METRICS_PORT=0, nothing to probe"
        return probe_http(f"http://127.0.0.1:{settings.metrics_port}/ready")
    if role == "notify":
        if settings.notify_metrics_port == 0:
            return True, "notify: NOTIFY_METRICS_PORT=0, nothing to probe"
        return probe_http(f"http://127.0.0.1:{settings.notify_metrics_port}/metrics")
    if role == "sim":
        needed = [settings.machines_file]
        if settings.device_auth == "required":
            needed.append(settings.device_keys_file)
        missing = [str(path) for path in needed if path is not None and not Path(path).is_file()]
        if missing:
            return False, f"sim: not started yet, missing {', '.join(missing)}"
        return True, "sim: fleet metadata and device keys written"
    return True, f"{role or 'no plantpulse command'}: nothing to probe"


def main() -> int:
    healthy, reason = check(container_role(), Settings())
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
